import SlipwayProtos
import SlipwayRPC
import Synchronization

/// Which organization and project an environment, service or deployment belongs to, learned from
/// the pipeline and kept (these never move). A token's scope is checked against it; an object
/// outside the scope answers NOT_FOUND, the same as one that does not exist.
final class Ownership: Sendable {
    typealias Pipeline = Slipway_Pipeline_V1_Pipeline

    struct Owner: Sendable, Equatable {
        var organizationID: String
        var projectID: String
    }

    let pipeline: Slipway_Pipeline_V1_Pipeline.Client
    private let known = Mutex(Known())
    /// Walks running, by scope.
    private let walks = Mutex<[String: Task<Void, any Error>]>([:])

    private struct Known {
        var projects: [String: String] = [:]  // project -> organization
        var environments: [String: Owner] = [:]
        var services: [String: String] = [:]  // service -> environment
        var deployments: [String: String] = [:]  // deployment -> environment
        /// When each scope ("" for the platform) was last walked: unknown ids within
        /// ``walkInterval`` of a walk answer NOT_FOUND without another.
        var walked: [String: ContinuousClock.Instant] = [:]
    }

    static let walkInterval = Duration.seconds(2)

    init(pipeline: RPCClient) {
        self.pipeline = .init(wrapping: pipeline)
    }

    func remember(project: String, organization: String) {
        known.withLock { $0.projects[project] = organization }
    }

    func remember(environment: String, owner: Owner) {
        known.withLock { $0.environments[environment] = owner }
    }

    func remember(service: String, environment: String) {
        known.withLock { $0.services[service] = environment }
    }

    /// The organization of a project the principal may see, or NOT_FOUND.
    func project(_ id: String, for principal: Principal) async throws -> Owner {
        try checkID(id, "project_id")
        var organization = known.withLock { $0.projects[id] }
        if organization == nil, shouldWalk(principal) {
            try await walk(principal)
            organization = known.withLock { $0.projects[id] }
        }
        guard let organization, principal.covers(organizationID: organization, projectID: id) else {
            throw RPCError(.notFound, "project \(id) does not exist")
        }
        return Owner(organizationID: organization, projectID: id)
    }

    func environment(_ id: String, for principal: Principal) async throws -> Owner {
        try checkID(id, "environment_id")
        var owner = known.withLock { $0.environments[id] }
        if owner == nil, shouldWalk(principal) {
            try await walk(principal)
            owner = known.withLock { $0.environments[id] }
        }
        guard let owner, principal.covers(organizationID: owner.organizationID, projectID: owner.projectID) else {
            throw RPCError(.notFound, "environment \(id) does not exist")
        }
        return owner
    }

    /// The service's environment, once checked against the principal's scope.
    func service(_ id: String, for principal: Principal) async throws -> String {
        try checkID(id, "service_id")
        var environment = known.withLock { $0.services[id] }
        if environment == nil {
            var request = Slipway_Pipeline_V1_GetServiceRequest()
            request.serviceId = id
            let service = try await pipeline.getService(request)
            environment = service.environmentId
            remember(service: id, environment: service.environmentId)
        }
        do {
            _ = try await self.environment(environment!, for: principal)
        } catch let error as RPCError where error.code == .notFound {
            throw RPCError(.notFound, "service \(id) does not exist")
        }
        return environment!
    }

    func deployment(_ id: String, for principal: Principal) async throws -> String {
        try checkID(id, "deployment_id")
        var environment = known.withLock { $0.deployments[id] }
        if environment == nil {
            var request = Slipway_Pipeline_V1_GetDeploymentRequest()
            request.deploymentId = id
            let deployment = try await pipeline.getDeployment(request)
            environment = deployment.environmentId
            known.withLock { $0.deployments[id] = deployment.environmentId }
        }
        do {
            _ = try await self.environment(environment!, for: principal)
        } catch let error as RPCError where error.code == .notFound {
            throw RPCError(.notFound, "deployment \(id) does not exist")
        }
        return environment!
    }

    /// The environments known in an organization (after ``refresh(_:)``).
    func environments(in organization: String) -> [String: Owner] {
        known.withLock { $0.environments.filter { $0.value.organizationID == organization } }
    }

    /// Whether an unknown id is worth a walk: not when the same scope finished a walk moments ago
    /// (a token sending made-up ids costs the pipeline one walk per interval, not one per call).
    private func shouldWalk(_ principal: Principal, now: ContinuousClock.Instant = .now) -> Bool {
        known.withLock { known in
            guard let last = known.walked[principal.organizationID] else { return true }
            return now - last >= Self.walkInterval
        }
    }

    /// Walks the principal's scope, sharing a walk already running for it.
    private func walk(_ principal: Principal) async throws {
        let scope = principal.organizationID
        let task = walks.withLock { walks -> Task<Void, any Error> in
            if let running = walks[scope] { return running }
            let task = Task { try await self.refresh(principal) }
            walks[scope] = task
            return task
        }
        defer { walks.withLock { if $0[scope] == task { $0[scope] = nil } } }
        try await task.value
        known.withLock { $0.walked[scope] = .now }
    }

    /// Walks the organizations the principal may see: their projects and environments.
    func refresh(_ principal: Principal) async throws {
        var organizations: [String] = []
        if principal.isPlatform {
            organizations = try await pipeline.listOrganizations(.init()).organizations.map(\.id)
        } else {
            organizations = [principal.organizationID]
        }
        for organization in organizations {
            var projectsRequest = Slipway_Pipeline_V1_ListProjectsRequest()
            projectsRequest.organizationId = organization
            let projects: [Slipway_Pipeline_V1_Project]
            do {
                projects = try await pipeline.listProjects(projectsRequest).projects
            } catch let error as RPCError where error.code == .notFound {
                continue
            }
            for project in projects {
                remember(project: project.id, organization: organization)
                var request = Slipway_Pipeline_V1_ListEnvironmentsRequest()
                request.projectId = project.id
                for environment in try await pipeline.listEnvironments(request).environments {
                    remember(environment: environment.id, owner: Owner(organizationID: organization, projectID: project.id))
                }
            }
        }
    }
}

func checkID(_ id: String, _ field: String) throws(RPCError) {
    guard !id.isEmpty else { throw RPCError(.invalidArgument, "\(field) is required") }
    guard id.utf8.count <= 128 else { throw RPCError(.invalidArgument, "\(field) is longer than 128 characters") }
}
