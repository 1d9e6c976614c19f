import Foundation
import SlipwayProtos
import SlipwayRPC

/// Server-Sent Events (text/event-stream) for log lines and status events, as JSON objects with
/// the field names of the .proto files.
enum ServerSentEvents {
    /// A log line (`event: line`, id: its sequence number, or its timestamp on an environment's
    /// merged stream) or a gap (`event: dropped`).
    static func event(_ response: Slipway_Logs_V1_TailResponse, idByTimestamp: Bool) -> String {
        switch response.item {
        case .line(let line)?:
            var object: [String: Any] = [
                "seq": line.seq, "timestamp_nanos": line.timestampNanos, "text": line.text,
                "level": line.level.protoName, "source": line.source.protoName,
            ]
            if let stream = line.stream {
                object["deployment_id"] = stream.deploymentId.isEmpty ? nil : stream.deploymentId
                object["environment_id"] = stream.environmentId.isEmpty ? nil : stream.environmentId
                object["service_id"] = stream.serviceId.isEmpty ? (line.serviceId.isEmpty ? nil : line.serviceId) : stream.serviceId
            }
            if !line.instanceId.isEmpty { object["instance_id"] = line.instanceId }
            if !line.stage.isEmpty { object["stage"] = line.stage }
            if !line.step.isEmpty { object["step"] = line.step }
            if line.continued { object["continued"] = true }
            return frame(event: "line", id: String(idByTimestamp ? UInt64(clamping: line.timestampNanos) : line.seq), object)
        case .dropped(let dropped)?:
            return frame(event: "dropped", id: nil, ["first_seq": dropped.firstSeq, "last_seq": dropped.lastSeq, "count": dropped.count])
        case nil:
            return ""
        }
    }

    static func event(_ event: Slipway_Pipeline_V1_StatusEvent) -> String {
        var object: [String: Any] = [
            "kind": event.kind.protoName, "environment_id": event.environmentId, "unix_millis": event.unixMillis,
            "environment_deployment_status": event.environmentDeploymentStatus.protoName,
            "environment_running_status": event.environmentRunningStatus.protoName,
        ]
        if !event.deploymentId.isEmpty { object["deployment_id"] = event.deploymentId }
        if !event.serviceId.isEmpty { object["service_id"] = event.serviceId }
        if event.deploymentStatus != .deploymentStatusUnspecified { object["deployment_status"] = event.deploymentStatus.protoName }
        if event.runningStatus != .runningStatusUnspecified { object["running_status"] = event.runningStatus.protoName }
        if event.step != .stepUnspecified { object["step"] = event.step.protoName }
        if event.stepStatus != .stepStatusUnspecified { object["step_status"] = event.stepStatus.protoName }
        if !event.message.isEmpty { object["message"] = event.message }
        return frame(event: "status", id: nil, object)
    }

    static func error(_ error: RPCError) -> String {
        frame(event: "error", id: nil, ["code": name(error.code), "message": error.message])
    }

    static func frame(event: String, id: String?, _ object: [String: Any]) -> String {
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
        var text = ""
        if let id { text += "id: \(id)\n" }
        return text + "event: \(event)\ndata: \(data)\n\n"
    }

    /// gRPC's name of a status code.
    static func name(_ code: RPCStatusCode) -> String {
        let names = [
            "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED",
            "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
            "UNAUTHENTICATED",
        ]
        let raw = Int(code.rawValue)
        return raw >= 0 && raw < names.count ? names[raw] : "CODE_\(raw)"
    }
}
