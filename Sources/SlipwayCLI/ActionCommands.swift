import ArgumentParser
import Foundation
import SlipwayProtobuf
import SlipwayProtos

/// Options of every action: which services (or the whole environment), and whether to wait.
struct ActionOptions: ParsableArguments, Sendable {
    @Argument(help: "Services by name or id.") var services: [String] = []
    @Flag(help: "Every service of the environment (instead of naming them).") var all = false
    @Flag(help: "Return once the action is queued instead of following it to its end.") var detach = false
    @Option(help: "Idempotency key: a retry with the same key is the same deployment.") var idempotencyKey: String?
}

/// Queues an action, then follows its deployment to the end (unless detached) and sets the exit code.
func runAction(
    _ client: ClientOptions, _ target: TargetOptions, services names: [String], all: Bool = false, detach: Bool, verb: String,
    _ send: (GatewayClient, Slipway_Pipeline_V1_Environment, [Slipway_Pipeline_V1_Service]) async throws -> Slipway_Pipeline_V1_ActionResponse
) async throws {
    guard names.isEmpty != !all else {
        throw CLIError.usage(names.isEmpty ? "name the services, or pass --all for every service of the environment" : "name services or pass --all, not both")
    }
    let failed = try await withGateway(client) { gateway, out -> Bool in
        let (environment, services) = try await target.services(gateway, named: names)
        let response = try await send(gateway, environment, services)
        let what = services.isEmpty ? "environment \(environment.name)" : services.map(\.name).joined(separator: ", ")
        if detach {
            if out.json { out.emit(JSON.action(response)) } else {
                out.line("\(verb) \(what): deployment \(response.deploymentId)\(response.duplicate ? " (already requested)" : "")\(response.queuePosition > 0 ? ", queued at position \(response.queuePosition)" : "")")
            }
            return false
        }
        if !out.json {
            out.line("\(verb) \(what): deployment \(response.deploymentId)\(response.duplicate ? " (already requested)" : "")\(response.queuePosition > 0 ? ", queued at position \(response.queuePosition)" : "")")
        }
        let deployment = try await follow(gateway, out, environment: environment.id, deployment: response.deploymentId)
        if out.json { out.emit(JSON.deployment(deployment)) } else { printDeployment(out, deployment) }
        return !succeeded(deployment.status)
    }
    if failed { throw ExitCode(1) }
}

func succeeded(_ status: Slipway_Pipeline_V1_DeploymentStatus) -> Bool {
    [.deployed, .restarted, .stopped, .deleted].contains(status)
}

/// Prints a deployment's steps as they start and end; returns the deployment once it has ended.
func follow(_ gateway: GatewayClient, _ out: Output, environment: String, deployment id: String) async throws -> Slipway_Pipeline_V1_Deployment {
    var request = Slipway_Pipeline_V1_WatchRequest()
    request.environmentId = environment
    request.deploymentId = id
    var get = Slipway_Pipeline_V1_GetDeploymentRequest()
    get.deploymentId = id
    var names: [String: String] = [:]
    for service in try await gateway.call(API.GetDeployment.self, get).services { names[service.serviceId] = service.serviceName }
    var started: [String: Int64] = [:]
    try await gateway.stream(API.Watch.self, request) { event in
        switch event.kind {
        case .eventSnapshotEnd:
            return try await gateway.call(API.GetDeployment.self, get).endedUnixMillis == 0
        case .eventStep where event.deploymentId == id:
            guard !out.json else { return true }
            let key = "\(event.serviceId)/\(event.step.protoName)"
            let name = names[event.serviceId] ?? event.serviceId
            let step = event.step.protoName.lowercased().padding(toLength: 18, withPad: " ", startingAt: 0)
            switch event.stepStatus {
            case .stepRunning:
                started[key] = event.unixMillis
                out.line("  \(name)  \(step) \(out.paint("running", .blue))")
            default:
                let took = started[key].map { " " + duration(event.unixMillis - $0) } ?? ""
                let color: Output.Color = event.stepStatus == .stepSucceeded ? .green : (event.stepStatus == .stepFailed ? .red : .yellow)
                let status = event.stepStatus.protoName.replacingOccurrences(of: "STEP_", with: "").lowercased()
                out.line("  \(name)  \(step) \(out.paint(status, color))\(out.paint(took, .gray))\(event.message.isEmpty ? "" : "  " + event.message)")
            }
            return true
        case .eventDeploymentStatus where event.deploymentId == id:
            if !out.json { out.line("  \(names[event.serviceId] ?? event.serviceId)  \(out.status(event.deploymentStatus))\(event.message.isEmpty ? "" : ": " + event.message)") }
            return true
        case .eventDeploymentEnded where event.deploymentId == id:
            return false
        default:
            return true
        }
    }
    return try await gateway.call(API.GetDeployment.self, get)
}

/// How a step lived through pipeline restarts, for the history.
func interrupted(_ step: Slipway_Pipeline_V1_StepRecord) -> String {
    guard step.interruptions > 0 else { return "" }
    let times = step.interruptions == 1 ? "once" : "\(step.interruptions) times"
    return "\(step.message.isEmpty ? "" : " ")(interrupted \(times) by a pipeline restart; resumed at \(timestamp(step.resumedUnixMillis)))"
}

func printDeployment(_ out: Output, _ deployment: Slipway_Pipeline_V1_Deployment) {
    let took = deployment.endedUnixMillis > 0 ? " in \(duration(deployment.endedUnixMillis - deployment.createdUnixMillis))" : ""
    out.line("deployment \(deployment.id) \(deployment.action.protoName) \(out.status(deployment.status))\(took) (\(deployment.origin.protoName) by \(deployment.triggeredBy))")
    for service in deployment.services {
        out.line("  \(out.paint(service.serviceName, .bold))  \(out.status(service.status))\(service.commit.isEmpty ? "" : "  commit \(service.commit.prefix(12))")\(service.reason.isEmpty ? "" : "  " + service.reason)")
        for step in service.steps {
            let status = step.status.protoName.replacingOccurrences(of: "STEP_", with: "").lowercased()
            out.line("    \(step.step.protoName.lowercased().padding(toLength: 18, withPad: " ", startingAt: 0)) \(status.padding(toLength: 10, withPad: " ", startingAt: 0)) \(duration(step.durationMillis).padding(toLength: 9, withPad: " ", startingAt: 0)) \(step.message)\(interrupted(step))")
        }
    }
}

struct DeployCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "deploy", abstract: "Build (applications) and deploy a version: a commit, a tag, the branch head or an image tag.")
    @OptionGroup var client: ClientOptions
    @OptionGroup var target: TargetOptions
    @OptionGroup var action: ActionOptions
    @Option(help: "Commit, tag or image tag for the named services (default: the branch head / the service's tag).") var version: String?

    func run() async throws {
        try await runAction(client, target, services: action.services, all: action.all, detach: action.detach, verb: "deploying") { gateway, environment, services in
            var request = Slipway_Api_V1_DeployRequest()
            request.environmentId = environment.id
            request.serviceIds = services.map(\.id)
            if let version {
                guard !services.isEmpty else { throw CLIError.usage("--version needs the services it applies to") }
                for service in services { request.versions[service.id] = version }
            }
            request.idempotencyKey = action.idempotencyKey ?? ""
            return try await gateway.call(API.Deploy.self, request)
        }
    }
}

/// redeploy, restart, stop, delete: the same request.
struct SimpleAction<M: ProtoMethod>: Sendable where M.Input == Slipway_Api_V1_EnvironmentActionRequest, M.Output == Slipway_Pipeline_V1_ActionResponse {
    static func run(_ client: ClientOptions, _ target: TargetOptions, _ action: ActionOptions, verb: String) async throws {
        try await runAction(client, target, services: action.services, all: action.all, detach: action.detach, verb: verb) { gateway, environment, services in
            var request = Slipway_Api_V1_EnvironmentActionRequest()
            request.environmentId = environment.id
            request.serviceIds = services.map(\.id)
            request.idempotencyKey = action.idempotencyKey ?? ""
            return try await gateway.call(M.self, request)
        }
    }
}

struct RedeployCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "redeploy", abstract: "Deploy again what runs, with the current configuration (no rebuild).")
    @OptionGroup var client: ClientOptions
    @OptionGroup var target: TargetOptions
    @OptionGroup var action: ActionOptions
    func run() async throws { try await SimpleAction<API.Redeploy>.run(client, target, action, verb: "redeploying") }
}

struct RestartCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "restart", abstract: "Restart the instances.")
    @OptionGroup var client: ClientOptions
    @OptionGroup var target: TargetOptions
    @OptionGroup var action: ActionOptions
    func run() async throws { try await SimpleAction<API.Restart>.run(client, target, action, verb: "restarting") }
}

struct StopCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "stop", abstract: "Stop the instances (a push does not start them again).")
    @OptionGroup var client: ClientOptions
    @OptionGroup var target: TargetOptions
    @OptionGroup var action: ActionOptions
    func run() async throws { try await SimpleAction<API.Stop>.run(client, target, action, verb: "stopping") }
}

struct DeleteCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "delete", abstract: "Delete services: instances, routes and the service (its history stays).")
    @OptionGroup var client: ClientOptions
    @OptionGroup var target: TargetOptions
    @OptionGroup var action: ActionOptions
    func run() async throws { try await SimpleAction<API.Delete>.run(client, target, action, verb: "deleting") }
}

struct CancelCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "cancel", abstract: "Cancel a queued or running deployment.")
    @OptionGroup var client: ClientOptions
    @Argument var deployment: String

    func run() async throws {
        try await withGateway(client) { gateway, out in
            var request = Slipway_Pipeline_V1_CancelRequest()
            request.deploymentId = deployment
            let response = try await gateway.call(API.Cancel.self, request)
            if out.json { return out.emit(JSON.deployment(response.deployment ?? .init())) }
            out.line("deployment \(deployment): \(out.status(response.deployment?.status ?? .deploymentStatusUnspecified))")
        }
    }
}

struct RollbackCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rollback", abstract: "Deploy an earlier release of a service: its image and its configuration (ADMIN), or its image only (--image-only).")
    @OptionGroup var client: ClientOptions
    @OptionGroup var target: TargetOptions
    @Argument var service: String
    @Option(help: "Release id (slipway history --releases); default: the release before the current one.") var release: String?
    @Flag(help: "Only the release's version, with the service's current configuration and secrets (what a DEPLOYER may do).") var imageOnly = false
    @Flag(help: "Return once queued.") var detach = false

    func run() async throws {
        try await runAction(client, target, services: [service], detach: detach, verb: "rolling back") { gateway, _, services in
            var request = Slipway_Api_V1_RollbackRequest()
            request.serviceId = services[0].id
            request.imageOnly = imageOnly
            if let release {
                request.releaseId = release
            } else {
                var list = Slipway_Pipeline_V1_ListReleasesRequest()
                list.serviceId = services[0].id
                let releases = try await gateway.call(API.ListReleases.self, list).releases
                guard releases.count >= 2 else { throw CLIError.failed("\(service) has \(releases.count) release(s); nothing earlier to roll back to") }
                request.releaseId = releases[1].id
            }
            return try await gateway.call(API.Rollback.self, request)
        }
    }
}

struct WatchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "watch", abstract: "Follow a deployment's stages and steps to its end (exit 0 if it succeeded, 1 if not).")
    @OptionGroup var client: ClientOptions
    @Argument var deployment: String

    func run() async throws {
        let failed = try await withGateway(client) { gateway, out -> Bool in
            var get = Slipway_Pipeline_V1_GetDeploymentRequest()
            get.deploymentId = deployment
            let current = try await gateway.call(API.GetDeployment.self, get)
            let ended = try await follow(gateway, out, environment: current.environmentId, deployment: deployment)
            if out.json { out.emit(JSON.deployment(ended)) } else { printDeployment(out, ended) }
            return !succeeded(ended.status)
        }
        if failed { throw ExitCode(1) }
    }
}
