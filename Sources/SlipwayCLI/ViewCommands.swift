import ArgumentParser
import Foundation
import SlipwayProtobuf
import SlipwayProtos

struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status", abstract: "Deployment and running status of an environment's services.")
    @OptionGroup var client: ClientOptions
    @OptionGroup var target: TargetOptions
    @Flag(name: [.short, .long], help: "Keep watching: print every change as it happens.") var watch = false

    func run() async throws {
        try await withGateway(client) { gateway, out in
            let environment = try await target.environment(gateway)
            var request = Slipway_Pipeline_V1_GetEnvironmentStatusRequest()
            request.environmentId = environment.id
            let status = try await gateway.call(API.GetEnvironmentStatus.self, request)
            if out.json {
                out.emit([
                    "environment_id": status.environmentId, "deployment_status": status.deploymentStatus.protoName,
                    "running_status": status.runningStatus.protoName, "running_deployment_id": status.runningDeploymentId,
                    "queued_deployment_ids": status.queuedDeploymentIds,
                    "services": status.services.map {
                        ["service_id": $0.serviceId, "service_name": $0.serviceName, "deployment_status": $0.deploymentStatus.protoName,
                         "running_status": $0.runningStatus.protoName, "deployment_id": $0.deploymentId] as [String: Any]
                    },
                ] as [String: Any])
            } else {
                out.line("environment \(out.paint(environment.name, .bold)): \(out.status(status.deploymentStatus)), \(out.running(status.runningStatus))")
                if !status.runningDeploymentId.isEmpty { out.line("running deployment \(status.runningDeploymentId); queued: \(status.queuedDeploymentIds.count)") }
                out.table(["SERVICE", "DEPLOYMENT", "RUNNING", "LAST DEPLOYMENT"], status.services.map {
                    [$0.serviceName, out.status($0.deploymentStatus), out.running($0.runningStatus), $0.deploymentId]
                })
            }
            guard watch else { return }
            var names: [String: String] = [:]
            for service in status.services { names[service.serviceId] = service.serviceName }
            var live = false
            var watchRequest = Slipway_Pipeline_V1_WatchRequest()
            watchRequest.environmentId = environment.id
            try await gateway.stream(API.Watch.self, watchRequest) { event in
                if event.kind == .eventSnapshotEnd { live = true; return true }
                guard live else { return true }
                if out.json { out.emit(JSON.event(event)); return true }
                let time = out.paint(timestamp(event.unixMillis), .gray)
                let name = names[event.serviceId] ?? event.serviceId
                switch event.kind {
                case .eventDeploymentQueued: out.line("\(time) deployment \(event.deploymentId) queued")
                case .eventDeploymentStatus: out.line("\(time) \(name) \(out.status(event.deploymentStatus))\(event.message.isEmpty ? "" : ": " + event.message)")
                case .eventRunningStatus: out.line("\(time) \(name) \(out.running(event.runningStatus))\(event.message.isEmpty ? "" : ": " + event.message)")
                case .eventStep: out.line("\(time) \(name) \(event.step.protoName.lowercased()) \(event.stepStatus.protoName.replacingOccurrences(of: "STEP_", with: "").lowercased())")
                case .eventDeploymentEnded: out.line("\(time) deployment \(event.deploymentId) ended: \(out.status(event.deploymentStatus))")
                default: break
                }
                return true
            }
        }
    }
}

struct HistoryCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "history", abstract: "Deployments of an environment (or one service), newest first, with their steps.")
    @OptionGroup var client: ClientOptions
    @OptionGroup var target: TargetOptions
    @Argument(help: "Only deployments of this service.") var service: String?
    @Option(help: "How many (at most 500).") var limit: UInt32 = 20
    @Flag(help: "Show each service's steps and their durations.") var steps = false
    @Flag(help: "List the service's releases instead (what rollback can deploy).") var releases = false

    func run() async throws {
        try await withGateway(client) { gateway, out in
            let environment = try await target.environment(gateway)
            var serviceID = ""
            if let service { serviceID = try await target.service(gateway, named: service).1.id }
            if releases {
                guard !serviceID.isEmpty else { throw CLIError.usage("--releases needs a service") }
                var request = Slipway_Pipeline_V1_ListReleasesRequest()
                request.serviceId = serviceID
                request.pageSize = limit
                let list = try await gateway.call(API.ListReleases.self, request).releases
                if out.json { return out.emit(list.map(JSON.release)) }
                return out.table(["RELEASE", "CREATED", "COMMIT", "IMAGE"], list.map { [$0.id, timestamp($0.createdUnixMillis), String($0.commit.prefix(12)), $0.image] })
            }
            var request = Slipway_Pipeline_V1_ListDeploymentsRequest()
            request.environmentId = environment.id
            request.serviceId = serviceID
            request.pageSize = limit
            let deployments = try await gateway.call(API.ListDeployments.self, request).deployments
            if out.json { return out.emit(deployments.map(JSON.deployment)) }
            if steps {
                for deployment in deployments { printDeployment(out, deployment) }
                return
            }
            out.table(["DEPLOYMENT", "ACTION", "STATUS", "CREATED", "TOOK", "BY", "SERVICES"], deployments.map { deployment in
                [
                    deployment.id, deployment.action.protoName, out.status(deployment.status), timestamp(deployment.createdUnixMillis),
                    deployment.endedUnixMillis > 0 ? duration(deployment.endedUnixMillis - deployment.createdUnixMillis) : "-",
                    "\(deployment.origin.protoName.lowercased()):\(deployment.triggeredBy)",
                    deployment.services.map { "\($0.serviceName)\($0.commit.isEmpty ? "" : "@" + $0.commit.prefix(8))" }.joined(separator: ","),
                ]
            })
        }
    }
}

struct LogsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "logs", abstract: "Application logs of a service (or the whole environment), or a deployment's logs.")
    @OptionGroup var client: ClientOptions
    @OptionGroup var target: TargetOptions
    @Argument(help: "Service; none: every service of the environment (with -f).") var service: String?
    @Flag(name: [.short, .long], help: "Follow: keep printing lines as they arrive.") var follow = false
    @Option(help: "A deployment's logs instead (its id, or \"last\" for the service's latest).") var deployment: String?
    @Option(help: "Only lines containing this.") var contains: String?
    @Option(help: "Only lines of this instance.") var instance: String?
    @Option(help: "Only lines at this level or above: trace, debug, info, warn, error.") var level: String?
    @Option(help: "Start after this sequence number (a cursor from an earlier run).") var afterSeq: UInt64?
    @Flag(help: "With -f and a service: only the instances' lines, not its new deployments' lines.") var noDeployments = false

    func run() async throws {
        try await withGateway(client) { gateway, out in
            var request = Slipway_Api_V1_LogsRequest()
            var filter = Slipway_Logs_V1_Filter()
            filter.contains = contains ?? ""
            filter.instanceId = instance ?? ""
            if let level {
                let levels: [String: Slipway_Logs_V1_Level] = ["trace": .trace, "debug": .debug, "info": .info, "warn": .warn, "error": .error]
                guard let parsed = levels[level] else { throw CLIError.usage("--level is trace, debug, info, warn or error") }
                filter.minLevel = parsed
            }
            request.filter = filter
            if let afterSeq { request.start = .afterSeq(afterSeq) }
            if let deployment {
                if deployment == "last" {
                    guard let service else { throw CLIError.usage("--deployment last needs a service") }
                    let (environment, found) = try await target.service(gateway, named: service)
                    var list = Slipway_Pipeline_V1_ListDeploymentsRequest()
                    list.environmentId = environment.id
                    list.serviceId = found.id
                    list.pageSize = 1
                    guard let last = try await gateway.call(API.ListDeployments.self, list).deployments.first else {
                        throw CLIError.notFound("\(service) has no deployments")
                    }
                    request.deploymentId = last.id
                } else {
                    request.deploymentId = deployment
                }
            } else if let service {
                request.serviceId = try await target.service(gateway, named: service).1.id
            } else {
                guard follow else { throw CLIError.usage("name a service, or follow the whole environment with -f") }
                request.environmentId = try await target.environment(gateway).id
            }
            let print = { @Sendable (line: Slipway_Logs_V1_LogLine) in
                if out.json { return out.emit(JSON.line(line)) }
                var prefix = ""
                if !line.step.isEmpty { prefix = out.paint("[\(line.step)] ", .gray) }
                if !line.instanceId.isEmpty { prefix = out.paint("\(line.instanceId) ", .gray) }
                let text = line.source == .stderr || line.level == .error ? out.paint(line.text, .red) : line.text
                out.line(prefix + text)
            }
            if follow {
                let tail = { @Sendable (request: Slipway_Api_V1_LogsRequest) async throws in
                    try await gateway.stream(API.TailLogs.self, request) { response in
                        switch response.item {
                        case .line(let line)?: print(line)
                        case .dropped(let dropped)?: if !out.json { out.line(out.paint("… \(dropped.count) lines removed by retention", .yellow)) }
                        case nil: break
                        }
                        return true
                    }
                }
                guard !request.serviceId.isEmpty, !noDeployments else { return try await tail(request) }
                // A service's logs also show its deployments as they happen: each new deployment's
                // lines about this service (build output, steps), beside the instances' lines.
                let service = request.serviceId
                let environment = try await target.environment(gateway).id
                let instances = request
                let lines = filter
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask { try await tail(instances) }
                    group.addTask {
                        var watch = Slipway_Pipeline_V1_WatchRequest()
                        watch.environmentId = environment
                        var live = false
                        var followed: [String: Task<Void, Never>] = [:]
                        defer { for task in followed.values { task.cancel() } }
                        try await gateway.stream(API.Watch.self, watch) { event in
                            if event.kind == .eventSnapshotEnd { live = true }
                            guard live, !event.deploymentId.isEmpty else { return true }
                            if event.kind == .eventDeploymentEnded, let task = followed[event.deploymentId] {
                                // Its last lines are in by now or a moment later; then its stream is let go.
                                Task {
                                    try? await Task.sleep(for: .seconds(2))
                                    task.cancel()
                                }
                                return true
                            }
                            guard event.serviceId == service, followed[event.deploymentId] == nil else { return true }
                            var deploymentLogs = Slipway_Api_V1_LogsRequest()
                            deploymentLogs.deploymentId = event.deploymentId
                            var only = lines
                            only.serviceId = service
                            only.instanceId = ""  // deployment lines have no instance
                            deploymentLogs.filter = only
                            if !out.json { out.line(out.paint("── deployment \(event.deploymentId)", .bold)) }
                            followed[event.deploymentId] = Task {
                                do {
                                    try await tail(deploymentLogs)
                                } catch is CancellationError {
                                } catch let error as CLIError where error.message.contains("cancelled") {
                                } catch {
                                    FileHandle.standardError.write(Data("error: following deployment \(event.deploymentId): \(error)\n".utf8))
                                }
                            }
                            return true
                        }
                    }
                    try await group.next()
                    group.cancelAll()
                }
                return
            }
            var query = Slipway_Api_V1_LogsQueryRequest()
            query.deploymentId = request.deploymentId
            query.serviceId = request.serviceId
            query.filter = filter
            query.pageSize = 1000
            repeat {
                let page = try await gateway.call(API.QueryLogs.self, query)
                for line in page.lines where afterSeq.map({ line.seq > $0 }) ?? true { print(line) }
                query.pageToken = page.nextPageToken
            } while !query.pageToken.isEmpty
        }
    }
}

struct TokenCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "token", abstract: "API tokens.", subcommands: [Create.self, List.self, Revoke.self, WhoAmI.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a token scoped to an organization (or one --project) with a role. Its secret is shown once.")
        @OptionGroup var client: ClientOptions
        @OptionGroup var target: TargetOptions
        @Argument var name: String
        @Option(help: "viewer, deployer or admin.") var role: String = "viewer"
        @Flag(help: "Scope the token to --project instead of the whole organization.") var projectScope = false
        @Option(help: "Requests per second (default: the gateway's).") var rateLimit: UInt32 = 0

        func run() async throws {
            try await withGateway(client) { gateway, out in
                var request = Slipway_Api_V1_CreateTokenRequest()
                request.name = name
                switch role {
                case "viewer": request.role = .viewer
                case "deployer": request.role = .deployer
                case "admin": request.role = .admin
                default: throw CLIError.usage("--role is viewer, deployer or admin")
                }
                if projectScope {
                    let project = try await target.project(gateway)
                    request.organizationId = project.organizationId
                    request.projectId = project.id
                } else {
                    request.organizationId = try await target.organization(gateway).id
                }
                request.rateLimitPerSecond = rateLimit
                let response = try await gateway.call(API.CreateToken.self, request)
                if out.json {
                    var object = JSON.token(response.token ?? .init())
                    object["secret"] = response.secret
                    return out.emit(object)
                }
                out.line("token \(name) (\(role)) created: \(response.token?.id ?? "")")
                out.line(response.secret)
                out.line(out.paint("this is the only time the secret is shown; keep it (SLIPWAY_TOKEN=...)", .yellow))
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List an organization's tokens.")
        @OptionGroup var client: ClientOptions
        @OptionGroup var target: TargetOptions

        func run() async throws {
            try await withGateway(client) { gateway, out in
                var request = Slipway_Api_V1_ListTokensRequest()
                request.organizationId = try await target.organization(gateway).id
                let tokens = try await gateway.call(API.ListTokens.self, request).tokens
                if out.json { return out.emit(tokens.map(JSON.token)) }
                out.table(["NAME", "ID", "ROLE", "PROJECT", "CREATED", "REVOKED"], tokens.map {
                    [$0.name, $0.id, $0.role.protoName.lowercased(), $0.projectId.isEmpty ? "*" : $0.projectId, timestamp($0.createdUnixMillis), timestamp($0.revokedUnixMillis)]
                })
            }
        }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Revoke a token (it stops working at once).")
        @OptionGroup var client: ClientOptions
        @Argument var id: String

        func run() async throws {
            try await withGateway(client) { gateway, out in
                var request = Slipway_Api_V1_RevokeTokenRequest()
                request.tokenId = id
                let token = try await gateway.call(API.RevokeToken.self, request)
                out.json ? out.emit(JSON.token(token)) : out.line("token \(token.name) revoked")
            }
        }
    }

    struct WhoAmI: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "whoami", abstract: "The token in use: its scope and role.")
        @OptionGroup var client: ClientOptions

        func run() async throws {
            try await withGateway(client) { gateway, out in
                let token = try await gateway.call(API.WhoAmI.self, .init())
                if out.json { return out.emit(JSON.token(token)) }
                let scope = token.organizationId.isEmpty ? "the platform" : (token.projectId.isEmpty ? "organization \(token.organizationId)" : "project \(token.projectId)")
                out.line("token \(token.name) (\(token.id)): \(token.role.protoName.lowercased()) of \(scope)")
            }
        }
    }
}

struct WebhookCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "webhook", abstract: "Git webhooks: push to deploy.", subcommands: [Create.self, Deliveries.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create (or replace) a service's webhook; prints its URL and secret for the git host.")
        @OptionGroup var client: ClientOptions
        @OptionGroup var target: TargetOptions
        @Argument var service: String

        func run() async throws {
            try await withGateway(client) { gateway, out in
                var request = Slipway_Api_V1_CreateWebhookRequest()
                request.serviceId = try await target.service(gateway, named: service).1.id
                let webhook = try await gateway.call(API.CreateWebhook.self, request)
                if out.json { return out.emit(["service_id": webhook.serviceId, "url": webhook.url, "secret": webhook.secret]) }
                out.line("webhook for \(service):")
                out.line("  url     \(webhook.url)")
                out.line("  secret  \(webhook.secret)")
                out.line("GitHub, Gitea, Bitbucket: content type application/json, this secret; GitLab: this secret as the token. Push events only.")
            }
        }
    }

    struct Deliveries: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "What the service's webhook received and what each delivery did.")
        @OptionGroup var client: ClientOptions
        @OptionGroup var target: TargetOptions
        @Argument var service: String
        @Option(help: "How many (at most 500).") var limit: UInt32 = 20

        func run() async throws {
            try await withGateway(client) { gateway, out in
                var request = Slipway_Api_V1_ListDeliveriesRequest()
                request.serviceId = try await target.service(gateway, named: service).1.id
                request.pageSize = limit
                let deliveries = try await gateway.call(API.ListDeliveries.self, request).deliveries
                if out.json { return out.emit(deliveries.map(JSON.delivery)) }
                out.table(["RECEIVED", "PROVIDER", "REF", "COMMIT", "OUTCOME", "DEPLOYMENT", "REASON"], deliveries.map {
                    [timestamp($0.receivedUnixMillis), $0.provider.protoName.lowercased(), $0.ref, String($0.commit.prefix(12)),
                     $0.outcome.protoName.replacingOccurrences(of: "DELIVERY_", with: "").lowercased(), $0.deploymentId, $0.reason]
                })
            }
        }
    }
}
