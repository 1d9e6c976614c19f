import Foundation
import SlipwayProtos

/// Writes what commands show: text for people (colored on a terminal, plain when piped or with
/// NO_COLOR) or one JSON document per result for scripts.
struct Output: Sendable {
    let format: OutputFormat
    let colors: Bool

    init(_ format: OutputFormat) {
        self.format = format
        self.colors = isatty(STDOUT_FILENO) == 1 && ProcessInfo.processInfo.environment["NO_COLOR"] == nil
    }

    var json: Bool { format == .json }

    func line(_ text: String = "") {
        Self.write(Data((text + "\n").utf8))
    }

    /// To standard output. A reader that went away (`slipway ps | head -3`) ends the command quietly,
    /// as for any Unix tool, instead of trapping in FileHandle.write.
    static func write(_ data: Data) {
        let written = data.withUnsafeBytes { bytes -> Bool in
            var offset = 0
            while offset < bytes.count {
                let count = Glibc.write(STDOUT_FILENO, bytes.baseAddress! + offset, bytes.count - offset)
                if count < 0 {
                    if errno == EINTR { continue }
                    return false
                }
                offset += count
            }
            return true
        }
        if !written { exit(errno == EPIPE ? 0 : 7) }
    }

    func emit(_ object: Any) {
        guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]) else { return }
        Self.write(data + Data("\n".utf8))
    }

    func paint(_ text: String, _ color: Color) -> String {
        colors ? "\u{1B}[\(color.rawValue)m\(text)\u{1B}[0m" : text
    }

    enum Color: String {
        case red = "31", green = "32", yellow = "33", blue = "34", gray = "90", bold = "1"
    }

    func status(_ status: Slipway_Pipeline_V1_DeploymentStatus) -> String {
        let name = status.protoName
        switch status {
        case .deployed, .restarted, .stopped, .deleted: return paint(name, .green)
        case .buildError, .deploymentError, .restartError, .stopError, .deleteError: return paint(name, .red)
        case .canceled, .canceling, .skipped: return paint(name, .yellow)
        default: return paint(name, .blue)
        }
    }

    func running(_ status: Slipway_Pipeline_V1_RunningStatus) -> String {
        let name = status.protoName.replacingOccurrences(of: "RUNNING_", with: "")
        switch status {
        case .runningRunning: return paint(name, .green)
        case .runningError: return paint(name, .red)
        case .runningWarning: return paint(name, .yellow)
        default: return name
        }
    }

    /// Left-aligned columns.
    func table(_ header: [String], _ rows: [[String]]) {
        var widths = header.map { Self.visible($0) }
        for row in rows { for (index, cell) in row.enumerated() where index < widths.count { widths[index] = max(widths[index], Self.visible(cell)) } }
        func render(_ cells: [String]) -> String {
            cells.enumerated().map { index, cell in
                index == cells.count - 1 ? cell : cell + String(repeating: " ", count: widths[index] - Self.visible(cell) + 2)
            }.joined()
        }
        line(paint(render(header), .bold))
        for row in rows { line(render(row)) }
    }

    static func visible(_ text: String) -> Int {
        var count = 0
        var escape = false
        for scalar in text.unicodeScalars {
            if scalar == "\u{1B}" { escape = true; continue }
            if escape { if scalar == "m" { escape = false }; continue }
            count += 1
        }
        return count
    }
}

func duration(_ millis: Int64) -> String {
    millis < 1000 ? "\(millis) ms" : String(format: "%.1f s", Double(millis) / 1000)
}

func timestamp(_ millis: Int64) -> String {
    guard millis > 0 else { return "-" }
    let formatter = DateFormatter()
    formatter.dateFormat = "yyyy-MM-dd HH:mm:ss"
    return formatter.string(from: Date(timeIntervalSince1970: Double(millis) / 1000))
}

/// JSON objects of the API's messages, with the .proto field names.
enum JSON {
    static func organization(_ value: Slipway_Pipeline_V1_Organization) -> [String: Any] { ["id": value.id, "name": value.name] }
    static func project(_ value: Slipway_Pipeline_V1_Project) -> [String: Any] {
        ["id": value.id, "name": value.name, "organization_id": value.organizationId]
    }
    static func environment(_ value: Slipway_Pipeline_V1_Environment) -> [String: Any] {
        ["id": value.id, "name": value.name, "project_id": value.projectId]
    }

    static func service(_ value: Slipway_Pipeline_V1_Service) -> [String: Any] {
        var object: [String: Any] = [
            "id": value.id, "name": value.name, "environment_id": value.environmentId, "secret_names": value.secretNames,
            "deployment_status": value.deploymentStatus.protoName, "running_status": value.runningStatus.protoName,
            "domain_label": value.domainLabel,
        ]
        if let config = value.config { object["config"] = self.config(config) }
        return object
    }

    static func config(_ config: Slipway_Pipeline_V1_ServiceConfig) -> [String: Any] {
        var object: [String: Any] = [
            "ports": config.ports.map { ["internal_port": $0.internalPort, "public": $0.public, "protocol": $0.protocol.protoName] as [String: Any] },
            "environment_variables": config.environmentVariables, "replicas": config.replicas, "cpu_millicores": config.cpuMillicores,
            "memory_mib": config.memoryMib, "custom_domains": config.customDomains, "stage": config.stage,
        ]
        switch config.source {
        case .application(let git)?:
            var application: [String: Any] = ["url": git.url, "branch": git.branch, "root_path": git.rootPath, "dockerfile_path": git.dockerfilePath, "build_args": git.buildArgs]
            application["build_network"] = git.buildNetwork.protoName
            object["application"] = application
        case .container(let container)?:
            object["container"] = ["image": container.image, "tag": container.tag]
        case nil: break
        }
        if let auto = config.autoDeploy { object["auto_deploy"] = ["enabled": auto.enabled, "branches": auto.branches, "paths": auto.paths] }
        if case .http(let http)? = config.readinessProbe?.kind { object["readiness_probe"] = ["http": ["path": http.path, "port": http.port]] }
        return object
    }

    static func action(_ value: Slipway_Pipeline_V1_ActionResponse) -> [String: Any] {
        ["deployment_id": value.deploymentId, "queue_position": value.queuePosition, "duplicate": value.duplicate,
         "superseded_deployment_ids": value.supersededDeploymentIds]
    }

    static func deployment(_ value: Slipway_Pipeline_V1_Deployment) -> [String: Any] {
        [
            "id": value.id, "environment_id": value.environmentId, "action": value.action.protoName, "origin": value.origin.protoName,
            "triggered_by": value.triggeredBy, "created_unix_millis": value.createdUnixMillis, "started_unix_millis": value.startedUnixMillis,
            "ended_unix_millis": value.endedUnixMillis, "status": value.status.protoName, "rollback_release_id": value.rollbackReleaseId,
            "services": value.services.map { service -> [String: Any] in
                [
                    "service_id": service.serviceId, "service_name": service.serviceName, "stage": service.stage,
                    "requested_version": service.requestedVersion, "commit": service.commit, "image": service.image,
                    "status": service.status.protoName, "reason": service.reason, "release_id": service.releaseId,
                    "steps": service.steps.map { step -> [String: Any] in
                        ["step": step.step.protoName, "status": step.status.protoName, "started_unix_millis": step.startedUnixMillis,
                         "duration_millis": step.durationMillis, "message": step.message, "interruptions": step.interruptions,
                         "resumed_unix_millis": step.resumedUnixMillis]
                    },
                ]
            },
            "stages": value.stages.map { ["stage": $0.stage, "status": $0.status.protoName, "duration_millis": $0.durationMillis] as [String: Any] },
        ]
    }

    static func release(_ value: Slipway_Pipeline_V1_Release) -> [String: Any] {
        var object: [String: Any] = [
            "id": value.id, "service_id": value.serviceId, "deployment_id": value.deploymentId, "created_unix_millis": value.createdUnixMillis,
            "commit": value.commit, "image": value.image,
        ]
        if let config = value.config { object["config"] = self.config(config) }
        return object
    }

    static func event(_ event: Slipway_Pipeline_V1_StatusEvent) -> [String: Any] {
        var object: [String: Any] = [
            "kind": event.kind.protoName, "environment_id": event.environmentId, "deployment_id": event.deploymentId,
            "service_id": event.serviceId, "unix_millis": event.unixMillis, "message": event.message,
            "environment_deployment_status": event.environmentDeploymentStatus.protoName,
        ]
        if event.deploymentStatus != .deploymentStatusUnspecified { object["deployment_status"] = event.deploymentStatus.protoName }
        if event.runningStatus != .runningStatusUnspecified { object["running_status"] = event.runningStatus.protoName }
        if event.step != .stepUnspecified { object["step"] = event.step.protoName; object["step_status"] = event.stepStatus.protoName }
        return object
    }

    static func line(_ line: Slipway_Logs_V1_LogLine) -> [String: Any] {
        var object: [String: Any] = [
            "seq": line.seq, "timestamp_nanos": line.timestampNanos, "text": line.text, "level": line.level.protoName,
            "source": line.source.protoName,
        ]
        if !line.instanceId.isEmpty { object["instance_id"] = line.instanceId }
        if !line.serviceId.isEmpty { object["service_id"] = line.serviceId }
        if let stream = line.stream, !stream.serviceId.isEmpty { object["service_id"] = stream.serviceId }
        if !line.step.isEmpty { object["step"] = line.step }
        return object
    }

    static func token(_ value: Slipway_Api_V1_Token) -> [String: Any] {
        [
            "id": value.id, "name": value.name, "organization_id": value.organizationId, "project_id": value.projectId,
            "role": value.role.protoName, "created_unix_millis": value.createdUnixMillis, "revoked_unix_millis": value.revokedUnixMillis,
            "rate_limit_per_second": value.rateLimitPerSecond, "created_by": value.createdBy,
        ]
    }

    static func delivery(_ value: Slipway_Api_V1_Delivery) -> [String: Any] {
        [
            "id": value.id, "service_id": value.serviceId, "provider": value.provider.protoName, "delivery_id": value.deliveryId,
            "event": value.event, "ref": value.ref, "commit": value.commit, "received_unix_millis": value.receivedUnixMillis,
            "outcome": value.outcome.protoName, "reason": value.reason, "deployment_id": value.deploymentId, "http_status": value.httpStatus,
        ]
    }
}
