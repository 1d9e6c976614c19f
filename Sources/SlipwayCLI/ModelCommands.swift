import ArgumentParser
import Foundation
import SlipwayProtobuf
import SlipwayProtos

typealias API = Slipway_Api_V1_Slipway
typealias PB = Slipway_Pipeline_V1_Pipeline

/// Runs a command body with a gateway connection, closing it after.
func withGateway<T>(_ options: ClientOptions, _ body: (GatewayClient, Output) async throws -> T) async throws -> T {
    let client = try options.connect()
    let output = Output(options.output)
    do {
        let result = try await body(client, output)
        await client.close()
        return result
    } catch {
        await client.close()
        throw error
    }
}

struct OrgCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "org", abstract: "Organizations.", subcommands: [Create.self, List.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create an organization (the platform's admin token only).")
        @OptionGroup var client: ClientOptions
        @Argument var name: String

        func run() async throws {
            try await withGateway(client) { gateway, out in
                var request = Slipway_Pipeline_V1_CreateOrganizationRequest()
                request.name = name
                let organization = try await gateway.call(API.CreateOrganization.self, request)
                out.json ? out.emit(JSON.organization(organization)) : out.line("organization \(organization.name) created: \(organization.id)")
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the organizations the token sees.")
        @OptionGroup var client: ClientOptions

        func run() async throws {
            try await withGateway(client) { gateway, out in
                let organizations = try await gateway.call(API.ListOrganizations.self, .init()).organizations
                if out.json { return out.emit(organizations.map(JSON.organization)) }
                out.table(["NAME", "ID"], organizations.map { [$0.name, $0.id] })
            }
        }
    }
}

struct ProjectCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "project", abstract: "Projects.", subcommands: [Create.self, List.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a project in an organization.")
        @OptionGroup var client: ClientOptions
        @OptionGroup var target: TargetOptions
        @Argument var name: String

        func run() async throws {
            try await withGateway(client) { gateway, out in
                var request = Slipway_Pipeline_V1_CreateProjectRequest()
                request.organizationId = try await target.organization(gateway).id
                request.name = name
                let project = try await gateway.call(API.CreateProject.self, request)
                out.json ? out.emit(JSON.project(project)) : out.line("project \(project.name) created: \(project.id)")
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List an organization's projects.")
        @OptionGroup var client: ClientOptions
        @OptionGroup var target: TargetOptions

        func run() async throws {
            try await withGateway(client) { gateway, out in
                var request = Slipway_Pipeline_V1_ListProjectsRequest()
                request.organizationId = try await target.organization(gateway).id
                let projects = try await gateway.call(API.ListProjects.self, request).projects
                if out.json { return out.emit(projects.map(JSON.project)) }
                out.table(["NAME", "ID"], projects.map { [$0.name, $0.id] })
            }
        }
    }
}

struct EnvCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "env", abstract: "Environments.", subcommands: [Create.self, List.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create an environment in a project.")
        @OptionGroup var client: ClientOptions
        @OptionGroup var target: TargetOptions
        @Argument var name: String

        func run() async throws {
            try await withGateway(client) { gateway, out in
                var request = Slipway_Pipeline_V1_CreateEnvironmentRequest()
                request.projectId = try await target.project(gateway).id
                request.name = name
                let environment = try await gateway.call(API.CreateEnvironment.self, request)
                out.json ? out.emit(JSON.environment(environment)) : out.line("environment \(environment.name) created: \(environment.id)")
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List a project's environments.")
        @OptionGroup var client: ClientOptions
        @OptionGroup var target: TargetOptions

        func run() async throws {
            try await withGateway(client) { gateway, out in
                var request = Slipway_Pipeline_V1_ListEnvironmentsRequest()
                request.projectId = try await target.project(gateway).id
                let environments = try await gateway.call(API.ListEnvironments.self, request).environments
                if out.json { return out.emit(environments.map(JSON.environment)) }
                out.table(["NAME", "ID"], environments.map { [$0.name, $0.id] })
            }
        }
    }
}

/// A service's configuration from flags; applied over the current one by `service update`.
struct ServiceConfigOptions: ParsableArguments, Sendable {
    @Option(help: "Build from this git repository (URL or path).") var git: String?
    @Option(help: "Branch deployed by default.") var branch: String?
    @Option(help: "Directory of the repository to build in.") var rootPath: String?
    @Option(help: "Dockerfile, relative to --root-path.") var dockerfile: String?
    @Option(name: .customLong("build-arg"), help: "Build argument KEY=VALUE (repeatable).") var buildArgs: [String] = []
    @Option(help: "Network of the Dockerfile's RUN steps: nat (egress only), none, or default (the builder's).") var buildNetwork: String?
    @Option(help: "Run this image (host/name) instead of building.") var image: String?
    @Option(help: "Tag of --image deployed by default.") var tag: String?
    @Option(name: .customLong("port"), help: "PORT[:public][:http|grpc|tcp] (repeatable), e.g. 8080:public.") var ports: [String] = []
    @Option(name: .customLong("var"), help: "Environment variable KEY=VALUE (repeatable).") var variables: [String] = []
    @Option(name: .customLong("secret"), help: "Secret KEY=VALUE, stored encrypted, never shown (repeatable).") var secrets: [String] = []
    @Option(help: "Instances.") var replicas: UInt32?
    @Option(help: "CPU in millicores.") var cpu: UInt32?
    @Option(help: "Memory in MiB.") var memory: UInt32?
    @Option(help: "Readiness: HTTP path answered 2xx on the first port, e.g. /health.") var healthPath: String?
    @Option(name: .customLong("domain"), help: "Custom domain (repeatable; --domain '' removes them all).") var domains: [String] = []
    @Option(help: "Deploy on git pushes: on or off.") var autoDeploy: String?
    @Option(name: .customLong("auto-deploy-branch"), help: "Branch whose pushes deploy (repeatable; default the service's branch).")
    var autoDeployBranches: [String] = []
    @Option(name: .customLong("auto-deploy-path"), help: "Only pushes touching this path prefix deploy (repeatable).") var autoDeployPaths: [String] = []
    @Option(help: "Deployment stage (services of a stage deploy together, stages in order).") var stage: UInt32?

    static func pairs(_ values: [String], _ flag: String) throws -> [String: String] {
        var result: [String: String] = [:]
        for value in values {
            guard let equals = value.firstIndex(of: "="), equals != value.startIndex else { throw CLIError.usage("--\(flag) \(value) is not KEY=VALUE") }
            result[String(value[..<equals])] = String(value[value.index(after: equals)...])
        }
        return result
    }

    func apply(to config: inout Slipway_Pipeline_V1_ServiceConfig) throws {
        if git != nil && image != nil { throw CLIError.usage("--git and --image exclude each other") }
        // A new source starts from defaults; the same kind keeps what it had (branch, build args, tag).
        if let git {
            var source = Slipway_Pipeline_V1_GitSource()
            if case .application(let current)? = config.source { source = current } else { source.branch = "main" }
            if git.contains("://") || git.contains("@") {
                source.url = git
            } else {
                // A local path: as a file:// URL when it holds characters a URL must escape (spaces).
                let url = URL(fileURLWithPath: git).standardizedFileURL
                source.url = url.path.contains(where: { $0.isWhitespace || $0 == "%" }) ? url.absoluteString : url.path
            }
            config.source = .application(source)
        }
        if let image {
            var source = Slipway_Pipeline_V1_ContainerSource()
            if case .container(let current)? = config.source { source = current } else { source.tag = "latest" }
            source.image = image
            config.source = .container(source)
        }
        if case .application(var source)? = config.source {
            if let branch { source.branch = branch }
            if let rootPath { source.rootPath = rootPath }
            if let dockerfile { source.dockerfilePath = dockerfile }
            for (key, value) in try Self.pairs(buildArgs, "build-arg") { source.buildArgs[key] = value }
            switch buildNetwork {
            case nil: break
            case "nat": source.buildNetwork = .nat
            case "none": source.buildNetwork = .none
            case "default": source.buildNetwork = .unspecified
            case let other?: throw CLIError.usage("--build-network \(other): nat, none or default")
            }
            config.source = .application(source)
        } else if case .container(var source)? = config.source {
            if buildNetwork != nil { throw CLIError.usage("--build-network is for services built from git (--git)") }
            if let tag { source.tag = tag }
            config.source = .container(source)
        } else {
            throw CLIError.usage("a service needs --git URL (built from a repository) or --image NAME (run as is)")
        }
        if !ports.isEmpty {
            config.ports = try ports.map { text in
                let parts = text.split(separator: ":").map(String.init)
                guard let number = UInt32(parts.first ?? ""), (1...65535).contains(number) else { throw CLIError.usage("--port \(text): PORT[:public][:http|grpc|tcp]") }
                var port = Slipway_Pipeline_V1_Port()
                port.internalPort = number
                for part in parts.dropFirst() {
                    switch part {
                    case "public": port.public = true
                    case "http": port.protocol = .http
                    case "grpc": port.protocol = .grpc
                    case "tcp": port.protocol = .tcp
                    default: throw CLIError.usage("--port \(text): \(part) is not public, http, grpc or tcp")
                    }
                }
                return port
            }
        }
        for (key, value) in try Self.pairs(variables, "var") { config.environmentVariables[key] = value }
        if let replicas { config.replicas = replicas }
        if let cpu { config.cpuMillicores = cpu }
        if let memory { config.memoryMib = memory }
        if let healthPath {
            guard let port = config.ports.first else { throw CLIError.usage("--health-path needs a --port") }
            var http = Slipway_Pipeline_V1_HttpProbe()
            http.path = healthPath
            http.port = port.internalPort
            var probe = Slipway_Pipeline_V1_Probe()
            probe.kind = .http(http)
            probe.periodSeconds = 1
            config.readinessProbe = probe
        }
        // `--domain ''` alone removes them all.
        if !domains.isEmpty { config.customDomains = domains.filter { !$0.isEmpty } }
        if let autoDeploy {
            guard autoDeploy == "on" || autoDeploy == "off" else { throw CLIError.usage("--auto-deploy is on or off") }
            var auto = config.autoDeploy ?? .init()
            auto.enabled = autoDeploy == "on"
            config.autoDeploy = auto
        }
        if !autoDeployBranches.isEmpty || !autoDeployPaths.isEmpty {
            var auto = config.autoDeploy ?? .init()
            if !autoDeployBranches.isEmpty { auto.branches = autoDeployBranches }
            if !autoDeployPaths.isEmpty { auto.paths = autoDeployPaths }
            config.autoDeploy = auto
        }
        if let stage { config.stage = stage }
    }
}

struct ServiceCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "service", abstract: "Services: applications built from git, or containers.",
        subcommands: [Create.self, Update.self, List.self, Show.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a service in an environment.")
        @OptionGroup var client: ClientOptions
        @OptionGroup var target: TargetOptions
        @OptionGroup var config: ServiceConfigOptions
        @Argument(help: "Lower-case letters, digits and '-' (it becomes a DNS label).") var name: String

        func run() async throws {
            try await withGateway(client) { gateway, out in
                var request = Slipway_Pipeline_V1_CreateServiceRequest()
                request.environmentId = try await target.environment(gateway).id
                request.name = name
                var configuration = Slipway_Pipeline_V1_ServiceConfig()
                try config.apply(to: &configuration)
                request.config = configuration
                request.secrets = try ServiceConfigOptions.pairs(config.secrets, "secret")
                let service = try await gateway.call(API.CreateService.self, request)
                out.json ? out.emit(JSON.service(service)) : out.line("service \(service.name) created: \(service.id)")
            }
        }
    }

    struct Update: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Change a service's configuration (applied at its next deployment).")
        @OptionGroup var client: ClientOptions
        @OptionGroup var target: TargetOptions
        @OptionGroup var config: ServiceConfigOptions
        @Flag(help: "With --secret: the given secrets replace all the service's secrets.") var replaceSecrets = false
        @Argument var name: String

        func run() async throws {
            try await withGateway(client) { gateway, out in
                let (_, service) = try await target.service(gateway, named: name)
                var configuration = service.config ?? .init()
                try config.apply(to: &configuration)
                var request = Slipway_Pipeline_V1_UpdateServiceRequest()
                request.serviceId = service.id
                request.config = configuration
                if !config.secrets.isEmpty {
                    // Secrets are never shown, so they cannot be merged here: the given set replaces them all.
                    guard replaceSecrets else {
                        throw CLIError.usage("--secret replaces every secret of \(name) (\(service.secretNames.joined(separator: ", "))); give them all and add --replace-secrets")
                    }
                    request.secrets = try ServiceConfigOptions.pairs(config.secrets, "secret")
                    request.replaceSecrets = true
                }
                let updated = try await gateway.call(API.UpdateService.self, request)
                out.json ? out.emit(JSON.service(updated)) : out.line("service \(updated.name) updated; deploy it to apply (slipway redeploy \(updated.name))")
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List an environment's services and their statuses.")
        @OptionGroup var client: ClientOptions
        @OptionGroup var target: TargetOptions

        func run() async throws {
            try await withGateway(client) { gateway, out in
                let services = try await target.services(gateway, in: try await target.environment(gateway))
                if out.json { return out.emit(services.map(JSON.service)) }
                out.table(["NAME", "DEPLOYMENT", "RUNNING", "SOURCE", "ID"], services.map { service in
                    [service.name, out.status(service.deploymentStatus), out.running(service.runningStatus), Self.source(service), service.id]
                })
            }
        }

        static func source(_ service: Slipway_Pipeline_V1_Service) -> String {
            switch service.config?.source {
            case .application(let git)?: "\(git.url)@\(git.branch)"
            case .container(let container)?: "\(container.image):\(container.tag)"
            case nil: "-"
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show a service's configuration and statuses.")
        @OptionGroup var client: ClientOptions
        @OptionGroup var target: TargetOptions
        @Argument var name: String

        func run() async throws {
            try await withGateway(client) { gateway, out in
                let (_, service) = try await target.service(gateway, named: name)
                var routeRequest = Slipway_Api_V1_GetRouteRequest()
                routeRequest.serviceId = service.id
                let route = try? await gateway.call(API.GetRoute.self, routeRequest)
                if out.json {
                    var object = JSON.service(service)
                    if let route {
                        object["url"] = route.url
                        object["default_domain"] = route.defaultDomain
                        object["custom_domains"] = route.customDomains.map {
                            ["domain": $0.domain, "state": $0.state, "reason": $0.reason, "tls": $0.tls, "txt_name": $0.txtName, "txt_value": $0.txtValue] as [String: Any]
                        }
                    }
                    return out.emit(object)
                }
                out.line("\(out.paint(service.name, .bold))  \(service.id)")
                if let route {
                    out.line("  url         \(route.url)")
                    for domain in route.customDomains {
                        out.line("  domain      \(domain.domain) \(domain.state)\(domain.reason.isEmpty ? "" : ": " + domain.reason)")
                        if domain.state != "VERIFIED", !domain.txtName.isEmpty { out.line("              TXT \(domain.txtName) \"\(domain.txtValue)\"") }
                    }
                } else if !service.domainLabel.isEmpty {
                    out.line("  domain      \(service.domainLabel).<base domain> (routed from its first deployment)")
                }
                out.line("  deployment  \(out.status(service.deploymentStatus))")
                out.line("  running     \(out.running(service.runningStatus))")
                out.line("  source      \(List.source(service))")
                let config = service.config ?? .init()
                out.line("  ports       \(config.ports.map { "\($0.internalPort)\($0.public ? " public" : "")" }.joined(separator: ", "))")
                out.line("  replicas    \(max(config.replicas, 1))")
                out.line("  variables   \(config.environmentVariables.keys.sorted().joined(separator: ", "))")
                out.line("  secrets     \(service.secretNames.joined(separator: ", "))")
                out.line("  auto-deploy \(config.autoDeploy?.enabled ?? false ? "on" : "off")")
            }
        }
    }
}
