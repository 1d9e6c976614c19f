import Foundation

/// The other services a deployment drives, behind protocols: the builder over its RPC API
/// (``BuilderCollaborator``), and the cluster, network and certs services once their issues land.
/// ``SimulatedCollaborators`` stands in for any of them (tests, the control-plane benchmark, and
/// the services not built yet), saying so in every step message.
public struct Collaborators: Sendable {
    public var images: any ImageCollaborator
    public var cluster: any ClusterCollaborator
    public var network: any NetworkCollaborator
    public var certs: any CertificateCollaborator

    public init(images: any ImageCollaborator, cluster: any ClusterCollaborator, network: any NetworkCollaborator, certs: any CertificateCollaborator) {
        self.images = images
        self.cluster = cluster
        self.network = network
        self.certs = certs
    }
}

/// One service's part of a deployment, as a collaborator receives it.
public struct ServiceWork: Sendable {
    public var deploymentID: String
    public var environment: DeploymentEnvironment
    /// The configuration and secrets this deployment runs with (a rollback's come from its release).
    public var service: ManagedService
    /// A commit or tag (applications), an image tag (containers); empty: the branch head / the service's tag.
    public var requestedVersion: String
    /// The requested version is a commit a release of this service was built from: it may be built
    /// again even if no branch or tag reaches it any more.
    public var requestedCommitWasReleased = false
    /// The organization the service belongs to (its builds share the organization's slots).
    public var organizationID = ""

    public init(deploymentID: String, environment: DeploymentEnvironment, service: ManagedService, requestedVersion: String) {
        self.deploymentID = deploymentID
        self.environment = environment
        self.service = service
        self.requestedVersion = requestedVersion
    }

    /// The image repository of the service in the platform registry.
    public var repository: String { "\(environment.id)/\(service.name)".lowercased() }

    /// Whether anything outside reaches it (a route and a certificate are needed).
    public var isPublic: Bool { service.configuration.ports.contains(where: \.isPublic) }
}

/// An image ready in the platform registry.
public struct BuiltImage: Sendable, Equatable {
    /// The commit built (applications); empty for containers.
    public var commit: String
    /// host/repository:tag@sha256:...
    public var image: String
    /// Already there: nothing was built or copied.
    public var skipped: Bool

    public init(commit: String, image: String, skipped: Bool) {
        self.commit = commit
        self.image = image
        self.skipped = skipped
    }
}

/// A step failed: the message says what happened, for a person.
public struct StepFailure: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    /// The build failed because of the code (BUILD_ERROR), not the platform.
    public var isBuildError: Bool
    /// The service doing the step could not be reached (stopped, restarting): the step is tried
    /// again until it answers or the step's time limit passes.
    public var isUnavailable: Bool

    public init(_ message: String, isBuildError: Bool = false, isUnavailable: Bool = false) {
        self.message = message
        self.isBuildError = isBuildError
        self.isUnavailable = isUnavailable
    }

    public var description: String { message }
}

/// The builder: GIT_CLONE and BUILD of applications, MIRROR_IMAGE of containers.
public protocol ImageCollaborator: Sendable {
    /// Fetches the commit and builds its image unless the registry has it. `cloned` is called once
    /// the commit is fetched and the build begins (the end of GIT_CLONE). Cancelling the task
    /// stops the build.
    func build(_ work: ServiceWork, cloned: @escaping @Sendable (_ commit: String) async -> Void) async throws -> BuiltImage
    /// Copies the container's image into the platform registry unless it is there.
    func mirror(_ work: ServiceWork) async throws -> BuiltImage
}

/// The cluster: runs releases. Every method is idempotent (a retried step does no harm).
public protocol ClusterCollaborator: Sendable {
    /// Rolls the image out; returns when the new version serves (or throws why it does not).
    func deploy(_ work: ServiceWork, image: String) async throws -> RunningStatus
    /// A deployment canceled mid-rollout: bring back `previous` (nil: the service had none, remove it).
    func rollBack(_ work: ServiceWork, to previous: PipelineStore.Release?) async throws -> RunningStatus?
    func restart(_ work: ServiceWork) async throws -> RunningStatus
    func stop(_ work: ServiceWork) async throws -> RunningStatus
    func delete(_ work: ServiceWork) async throws
}

/// The load balancer: routes of public services.
public protocol NetworkCollaborator: Sendable {
    func route(_ work: ServiceWork) async throws
    func removeRoutes(_ work: ServiceWork) async throws
}

/// Certificates of public services' domains.
public protocol CertificateCollaborator: Sendable {
    /// Certificates for the domains that are the service's; returns a note for the step when some
    /// custom domain is not verified yet (empty: every domain has its certificate). Throws when a
    /// certificate could not be had for a domain that is the service's.
    func certificate(_ work: ServiceWork) async throws -> String
}
