import Foundation

/// organization → project → environment → service (docs/architecture.md, Qovery's names).
public struct Organization: Sendable, Equatable, Codable {
    public var id: String
    public var name: String
}

public struct Project: Sendable, Equatable, Codable {
    public var id: String
    public var organizationID: String
    public var name: String
}

public struct DeploymentEnvironment: Sendable, Equatable, Codable {
    public var id: String
    public var projectID: String
    public var name: String
}

/// A service's full configuration, without its secrets (those are stored sealed, apart).
public struct ServiceSpec: Sendable, Equatable, Codable {
    /// An application built from git, or a container image from a registry.
    public enum Source: Sendable, Equatable, Codable {
        case application(GitSource)
        case container(image: String, tag: String)
    }

    public struct GitSource: Sendable, Equatable, Codable {
        public var url: String
        public var branch: String
        public var rootPath: String = ""
        public var dockerfilePath: String = "Dockerfile"
        public var buildArgs: [String: String] = [:]
        /// How the Dockerfile's RUN steps reach the network: nat or none (nil: the builder's default).
        public var buildNetwork: BuildNetwork? = nil

        public enum BuildNetwork: String, Sendable, Codable { case nat, none }

        public init(url: String, branch: String) {
            self.url = url
            self.branch = branch
        }
    }

    public struct Port: Sendable, Equatable, Codable {
        public enum Kind: String, Sendable, Codable { case http = "HTTP", grpc = "GRPC", tcp = "TCP" }
        public var internalPort: Int
        public var isPublic: Bool
        public var kind: Kind
    }

    public struct Probe: Sendable, Equatable, Codable {
        public enum Kind: Sendable, Equatable, Codable {
            case http(path: String, port: Int)
            case tcp(port: Int)
            case grpc(port: Int, service: String)
            case exec(command: [String])
        }
        public var kind: Kind
        public var initialDelaySeconds = 0
        public var periodSeconds = 10
        public var timeoutSeconds = 1
        public var failureThreshold = 3
        public var successThreshold = 1
    }

    public struct AutoDeploy: Sendable, Equatable, Codable {
        public var enabled = false
        /// Pushes to these branches deploy (empty: the service's branch).
        public var branches: [String] = []
        /// Only pushes touching these path prefixes deploy (empty: any).
        public var paths: [String] = []
    }

    public var source: Source
    public var ports: [Port] = []
    public var environmentVariables: [String: String] = [:]
    public var replicas = 1
    public var cpuMillicores = 500
    public var memoryMiB = 512
    public var readinessProbe: Probe?
    public var livenessProbe: Probe?
    public var customDomains: [String] = []
    public var autoDeploy = AutoDeploy()
    /// The pipeline stage the service belongs to (stages run in order).
    public var stage = 0

    public init(source: Source) {
        self.source = source
    }
}

public struct ManagedService: Sendable, Equatable {
    public var id: String
    public var environmentID: String
    public var name: String
    public var configuration: ServiceSpec
    /// Secret environment variables: encrypted at rest, never logged.
    public var secrets: [String: String]
    /// The first label of the service's default domain, unique across the platform: assigned when
    /// the service is created (`<service>-<environment>`, with a random suffix when another
    /// service, of any organization, holds that) and never handed to another service.
    public var domainLabel: String = ""
}

/// Where a deployment came from (docs/architecture.md).
public enum DeploymentOrigin: String, Sendable, Codable, CaseIterable {
    case api = "API", cli = "CLI", git = "GIT", console = "CONSOLE"
}
