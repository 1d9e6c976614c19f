import Foundation
import SlipwayProtos
import SlipwayRPC

/// `slipway.pipeline.v1.Pipeline`: the model, actions, history and Watch.
struct PipelineService: Slipway_Pipeline_V1_Pipeline.ServiceProtocol {
    let engine: PipelineEngine
    var store: PipelineStore { engine.store }

    // Limits of the API (docs/limits.md).
    /// Room for what the gateway forwards: `<token id>:<key>[:<environment id>]`, its key at most 200.
    static let maxIdempotencyKeyBytes = 512
    static let maxTriggeredByBytes = 200
    static let maxServicesPerEnvironment = 200
    static let maxSecretBytes = 64 * 1024

    func createOrganization(request: Slipway_Pipeline_V1_CreateOrganizationRequest, context: ServerContext) async throws -> Slipway_Pipeline_V1_Organization {
        try Proto.checkName(request.name, "name")
        let organization = try store.createOrganization(name: request.name)
        var message = Slipway_Pipeline_V1_Organization()
        message.id = organization.id
        message.name = organization.name
        return message
    }

    func listOrganizations(request: Slipway_Pipeline_V1_ListOrganizationsRequest, context: ServerContext) async throws -> Slipway_Pipeline_V1_ListOrganizationsResponse {
        var response = Slipway_Pipeline_V1_ListOrganizationsResponse()
        response.organizations = try store.organizations().map { organization in
            var message = Slipway_Pipeline_V1_Organization()
            message.id = organization.id
            message.name = organization.name
            return message
        }
        return response
    }

    // MARK: Quotas

    func getOrganizationQuotas(request: Slipway_Pipeline_V1_GetOrganizationQuotasRequest, context: ServerContext) async throws -> Slipway_Pipeline_V1_OrganizationQuotas {
        try Proto.checkID(request.organizationId, "organization_id")
        return try await quotas(request.organizationId)
    }

    func setOrganizationQuotas(request: Slipway_Pipeline_V1_SetOrganizationQuotasRequest, context: ServerContext) async throws -> Slipway_Pipeline_V1_OrganizationQuotas {
        try Proto.checkID(request.organizationId, "organization_id")
        let known = OrganizationQuotas.names.joined(separator: ", ")
        for name in Array(request.limits.keys) + request.reset where !OrganizationQuotas.names.contains(name) {
            throw Proto.invalid("unknown quota \"\(name.prefix(80))\"; one of \(known)")
        }
        for (name, value) in request.limits where value == 0 || value > UInt64(OrganizationQuotas.maxValue) {
            throw Proto.invalid("limits[\(name)] must be 1 to \(OrganizationQuotas.maxValue), got \(value) (reset it to go back to the platform's default)")
        }
        if let both = request.reset.first(where: { request.limits[$0] != nil }) {
            throw Proto.invalid("\(both) is both set and reset")
        }
        try store.setQuotas(organizationID: request.organizationId, limits: request.limits.mapValues { Int($0) }, reset: request.reset)
        if request.limits["concurrent-builds"] != nil || request.reset.contains("concurrent-builds") {
            await engine.refreshBuildLimit(organizationID: request.organizationId)
        }
        return try await quotas(request.organizationId)
    }

    private func quotas(_ organizationID: String) async throws -> Slipway_Pipeline_V1_OrganizationQuotas {
        var message = Slipway_Pipeline_V1_OrganizationQuotas()
        message.organizationId = organizationID
        let runningBuilds = await engine.buildsRunning(organizationID: organizationID)
        message.quotas = try store.quotas(organizationID: organizationID).map { quota in
            var item = Slipway_Pipeline_V1_Quota()
            item.name = quota.name
            item.limit = UInt64(quota.limit)
            item.used = UInt64(quota.name == "concurrent-builds" ? runningBuilds : quota.used)
            item.overridden = quota.overridden
            return item
        }
        return message
    }

    func createProject(request: Slipway_Pipeline_V1_CreateProjectRequest, context: ServerContext) async throws -> Slipway_Pipeline_V1_Project {
        try Proto.checkID(request.organizationId, "organization_id")
        try Proto.checkName(request.name, "name")
        return Self.project(try store.createProject(organizationID: request.organizationId, name: request.name))
    }

    func listProjects(request: Slipway_Pipeline_V1_ListProjectsRequest, context: ServerContext) async throws -> Slipway_Pipeline_V1_ListProjectsResponse {
        try Proto.checkID(request.organizationId, "organization_id")
        var response = Slipway_Pipeline_V1_ListProjectsResponse()
        response.projects = try store.projects(organizationID: request.organizationId).map(Self.project)
        return response
    }

    func createEnvironment(request: Slipway_Pipeline_V1_CreateEnvironmentRequest, context: ServerContext) async throws -> Slipway_Pipeline_V1_Environment {
        try Proto.checkID(request.projectId, "project_id")
        try Proto.checkName(request.name, "name")
        return Self.environment(try store.createEnvironment(projectID: request.projectId, name: request.name))
    }

    func listEnvironments(request: Slipway_Pipeline_V1_ListEnvironmentsRequest, context: ServerContext) async throws -> Slipway_Pipeline_V1_ListEnvironmentsResponse {
        try Proto.checkID(request.projectId, "project_id")
        var response = Slipway_Pipeline_V1_ListEnvironmentsResponse()
        response.environments = try store.environments(projectID: request.projectId).map(Self.environment)
        return response
    }

    func createService(request: Slipway_Pipeline_V1_CreateServiceRequest, context: ServerContext) async throws -> Slipway_Pipeline_V1_Service {
        try Proto.checkID(request.environmentId, "environment_id")
        try Proto.checkServiceName(request.name)
        let spec = try Proto.spec(request.config)
        try Self.checkSecrets(request.secrets)
        if try store.serviceSummaries(environmentID: request.environmentId).count >= Self.maxServicesPerEnvironment {
            throw RPCError(.resourceExhausted, "environment \(request.environmentId) already has \(Self.maxServicesPerEnvironment) services (the limit)")
        }
        let service = try store.createService(environmentID: request.environmentId, name: request.name, configuration: spec, secrets: request.secrets)
        return Proto.service(service, state: try? store.serviceState(service.id))
    }

    func updateService(request: Slipway_Pipeline_V1_UpdateServiceRequest, context: ServerContext) async throws -> Slipway_Pipeline_V1_Service {
        try Proto.checkID(request.serviceId, "service_id")
        let spec = try Proto.spec(request.config)
        try Self.checkSecrets(request.secrets)
        let current = try store.service(request.serviceId)
        guard try !store.isDeleted(serviceID: current.id) else { throw PipelineStore.Failure.notFound("service \(request.serviceId)") }
        try store.updateService(current.id, configuration: spec, secrets: request.replaceSecrets ? request.secrets : current.secrets)
        return Proto.service(try store.service(current.id), state: try? store.serviceState(current.id))
    }

    func getService(request: Slipway_Pipeline_V1_GetServiceRequest, context: ServerContext) async throws -> Slipway_Pipeline_V1_Service {
        try Proto.checkID(request.serviceId, "service_id")
        return Proto.service(try store.service(request.serviceId), state: try store.serviceState(request.serviceId))
    }

    func listServices(request: Slipway_Pipeline_V1_ListServicesRequest, context: ServerContext) async throws -> Slipway_Pipeline_V1_ListServicesResponse {
        try Proto.checkID(request.environmentId, "environment_id")
        let states = Dictionary(uniqueKeysWithValues: try store.serviceStates(environmentID: request.environmentId).map { ($0.serviceID, $0) })
        var response = Slipway_Pipeline_V1_ListServicesResponse()
        response.services = try store.services(environmentID: request.environmentId).map { Proto.service($0, state: states[$0.id]) }
        return response
    }

    // MARK: Actions

    func deploy(request: Slipway_Pipeline_V1_DeployRequest, context: ServerContext) async throws -> Slipway_Pipeline_V1_ActionResponse {
        var submission = try Self.submission(request.environmentId, .deploy, request.serviceIds, request.trigger)
        for (serviceID, version) in request.versions {
            guard request.serviceIds.isEmpty || request.serviceIds.contains(serviceID) else {
                throw Proto.invalid("versions names service \(serviceID), which is not in service_ids")
            }
            guard version.utf8.count <= 256, !version.contains(" ") else { throw Proto.invalid("versions[\(serviceID)] is not a commit, tag or image tag") }
        }
        submission.versions = request.versions
        return Self.accepted(try await engine.submit(submission))
    }

    func redeploy(request: Slipway_Pipeline_V1_ActionRequest, context: ServerContext) async throws -> Slipway_Pipeline_V1_ActionResponse {
        var submission = try Self.submission(request.environmentId, .deploy, request.serviceIds, request.trigger)
        // What each service runs now: its latest release's commit (applications) or tag.
        let ids = request.serviceIds.isEmpty ? try store.services(environmentID: request.environmentId).map(\.id) : request.serviceIds
        for id in ids {
            if let release = try store.releases(serviceID: id, limit: 1).first, !release.commit.isEmpty {
                submission.versions[id] = release.commit
            }
        }
        return Self.accepted(try await engine.submit(submission))
    }

    func restart(request: Slipway_Pipeline_V1_ActionRequest, context: ServerContext) async throws -> Slipway_Pipeline_V1_ActionResponse {
        try await act(.restart, request)
    }

    func stop(request: Slipway_Pipeline_V1_ActionRequest, context: ServerContext) async throws -> Slipway_Pipeline_V1_ActionResponse {
        try await act(.stop, request)
    }

    func delete(request: Slipway_Pipeline_V1_ActionRequest, context: ServerContext) async throws -> Slipway_Pipeline_V1_ActionResponse {
        try await act(.delete, request)
    }

    private func act(_ action: ServiceAction, _ request: Slipway_Pipeline_V1_ActionRequest) async throws -> Slipway_Pipeline_V1_ActionResponse {
        Self.accepted(try await engine.submit(try Self.submission(request.environmentId, action, request.serviceIds, request.trigger)))
    }

    func rollback(request: Slipway_Pipeline_V1_RollbackRequest, context: ServerContext) async throws -> Slipway_Pipeline_V1_ActionResponse {
        try Proto.checkID(request.serviceId, "service_id")
        try Proto.checkID(request.releaseId, "release_id")
        let service = try store.service(request.serviceId)
        let release = try store.release(request.releaseId)
        guard release.serviceID == service.id else {
            throw Proto.invalid("release \(release.id) belongs to service \(release.serviceID), not \(service.id)")
        }
        var submission = try Self.submission(service.environmentID, .deploy, [service.id], request.trigger)
        if !request.imageOnly { submission.rollbackReleaseID = release.id }
        submission.versions[service.id] = release.commit
        return Self.accepted(try await engine.submit(submission))
    }

    func cancel(request: Slipway_Pipeline_V1_CancelRequest, context: ServerContext) async throws -> Slipway_Pipeline_V1_CancelResponse {
        try Proto.checkID(request.deploymentId, "deployment_id")
        let record = try await engine.cancel(request.deploymentId)
        var response = Slipway_Pipeline_V1_CancelResponse()
        response.deployment = Proto.deployment(record, steps: try store.steps(deploymentID: record.id))
        return response
    }

    // MARK: History and statuses

    func getDeployment(request: Slipway_Pipeline_V1_GetDeploymentRequest, context: ServerContext) async throws -> Slipway_Pipeline_V1_Deployment {
        try Proto.checkID(request.deploymentId, "deployment_id")
        return Proto.deployment(try store.deployment(request.deploymentId), steps: try store.steps(deploymentID: request.deploymentId))
    }

    func listDeployments(request: Slipway_Pipeline_V1_ListDeploymentsRequest, context: ServerContext) async throws -> Slipway_Pipeline_V1_ListDeploymentsResponse {
        try Proto.checkID(request.environmentId, "environment_id")
        _ = try store.environment(request.environmentId)
        guard request.pageSize <= 500 else { throw Proto.invalid("page_size must be at most 500, got \(request.pageSize)") }
        let action: ServiceAction? = request.action == .actionUnspecified ? nil : Proto.action(request.action)
        if request.action != .actionUnspecified, action == nil { throw Proto.invalid("action \(request.action.rawValue) is not DEPLOY, RESTART, STOP or DELETE") }
        if !request.pageToken.isEmpty {
            guard let previous = try? store.deployment(request.pageToken), previous.environmentID == request.environmentId else {
                throw Proto.invalid("page_token is not one this environment's history returned")
            }
        }
        let size = request.pageSize == 0 ? 20 : Int(request.pageSize)
        let records = try store.history(
            environmentID: request.environmentId, action: action, serviceID: request.serviceId.isEmpty ? nil : request.serviceId,
            limit: size + 1, after: request.pageToken.isEmpty ? nil : request.pageToken)
        var response = Slipway_Pipeline_V1_ListDeploymentsResponse()
        response.deployments = try records.prefix(size).map { Proto.deployment($0, steps: try store.steps(deploymentID: $0.id)) }
        if records.count > size { response.nextPageToken = records[size - 1].id }
        return response
    }

    func listReleases(request: Slipway_Pipeline_V1_ListReleasesRequest, context: ServerContext) async throws -> Slipway_Pipeline_V1_ListReleasesResponse {
        try Proto.checkID(request.serviceId, "service_id")
        _ = try store.service(request.serviceId)
        guard request.pageSize <= 500 else { throw Proto.invalid("page_size must be at most 500, got \(request.pageSize)") }
        guard request.commit.utf8.count <= 64, request.commit.allSatisfy(\.isHexDigit) else {
            throw Proto.invalid("commit must be a commit SHA (hex digits, at most 64)")
        }
        var response = Slipway_Pipeline_V1_ListReleasesResponse()
        response.releases = try store.releases(
            serviceID: request.serviceId, commit: request.commit.isEmpty ? nil : request.commit, limit: request.pageSize == 0 ? 20 : Int(request.pageSize)
        ).map(Proto.release)
        return response
    }

    func getEnvironmentStatus(request: Slipway_Pipeline_V1_GetEnvironmentStatusRequest, context: ServerContext) async throws -> Slipway_Pipeline_V1_EnvironmentStatus {
        try Proto.checkID(request.environmentId, "environment_id")
        let states = try store.serviceStates(environmentID: request.environmentId)
        let queue = await engine.queue(of: request.environmentId)
        var response = Slipway_Pipeline_V1_EnvironmentStatus()
        response.environmentId = request.environmentId
        if let rollup = StatusRollup.deployment(states.compactMap(\.deploymentStatus)) { response.deploymentStatus = Proto.status(rollup) }
        if let rollup = StatusRollup.running(states.compactMap(\.runningStatus)) { response.runningStatus = Proto.running(rollup) }
        response.services = states.map(Self.serviceStatus)
        response.runningDeploymentId = queue.running ?? ""
        response.queuedDeploymentIds = queue.waiting
        return response
    }

    func watch(request: Slipway_Pipeline_V1_WatchRequest, response writer: ResponseWriter<Slipway_Pipeline_V1_StatusEvent>, context: ServerContext) async throws {
        try Proto.checkID(request.environmentId, "environment_id")
        try await Self.watch(request, store: store, hub: engine.hub, writer: writer)
    }

    // MARK: Watch

    /// Subscribes first, then sends the snapshot, so no change between the two is lost (one may
    /// arrive twice: the snapshot and the event say the same).
    static func watch(
        _ request: Slipway_Pipeline_V1_WatchRequest, store: PipelineStore, hub: StatusHub, writer: ResponseWriter<Slipway_Pipeline_V1_StatusEvent>
    ) async throws {
        let subscription = hub.subscribe(environmentID: request.environmentId, deploymentID: request.deploymentId.isEmpty ? nil : request.deploymentId)
        defer { hub.unsubscribe(subscription.id) }
        if !request.deploymentId.isEmpty {
            let deployment = try store.deployment(request.deploymentId)
            guard deployment.environmentID == request.environmentId else {
                throw Proto.invalid("deployment \(request.deploymentId) is not in environment \(request.environmentId)")
            }
        }
        var deployment: [String: DeploymentStatus] = [:]
        var running: [String: RunningStatus] = [:]
        for state in try store.serviceStates(environmentID: request.environmentId) {
            deployment[state.serviceID] = state.deploymentStatus
            running[state.serviceID] = state.runningStatus
            var event = PipelineEvent(kind: .snapshot, environmentID: request.environmentId, deploymentID: state.lastDeploymentID ?? "", serviceID: state.serviceID)
            event.deploymentStatus = state.deploymentStatus
            event.runningStatus = state.runningStatus
            try await writer.write(message(event, deployment, running))
        }
        try await writer.write(message(PipelineEvent(kind: .snapshotEnd, environmentID: request.environmentId), deployment, running))
        for try await event in subscription.events {
            if let status = event.deploymentStatus, !event.serviceID.isEmpty { deployment[event.serviceID] = status }
            if let status = event.runningStatus, !event.serviceID.isEmpty { running[event.serviceID] = status }
            try await writer.write(message(event, deployment, running))
        }
    }

    private static func message(_ event: PipelineEvent, _ deployment: [String: DeploymentStatus], _ running: [String: RunningStatus]) -> Slipway_Pipeline_V1_StatusEvent {
        var message = Proto.event(event)
        if let rollup = StatusRollup.deployment(Array(deployment.values)) { message.environmentDeploymentStatus = Proto.status(rollup) }
        if let rollup = StatusRollup.running(Array(running.values)) { message.environmentRunningStatus = Proto.running(rollup) }
        return message
    }

    // MARK: Helpers

    static func submission(_ environmentID: String, _ action: ServiceAction, _ serviceIDs: [String], _ trigger: Slipway_Pipeline_V1_Trigger?) throws(RPCError) -> PipelineEngine.Submission {
        try Proto.checkID(environmentID, "environment_id")
        for id in serviceIDs { try Proto.checkID(id, "service_ids") }
        let trigger = trigger ?? Slipway_Pipeline_V1_Trigger()
        guard trigger.idempotencyKey.utf8.count <= maxIdempotencyKeyBytes else {
            throw Proto.invalid("trigger.idempotency_key is longer than \(maxIdempotencyKeyBytes) bytes")
        }
        guard trigger.triggeredBy.utf8.count <= maxTriggeredByBytes else { throw Proto.invalid("trigger.triggered_by is longer than \(maxTriggeredByBytes) bytes") }
        var submission = PipelineEngine.Submission(environmentID: environmentID, action: action, serviceIDs: Array(Set(serviceIDs)).sorted())
        submission.origin = Proto.origin(trigger.origin)
        submission.triggeredBy = trigger.triggeredBy
        submission.idempotencyKey = trigger.idempotencyKey.isEmpty ? nil : trigger.idempotencyKey
        return submission
    }

    static func checkSecrets(_ secrets: [String: String]) throws(RPCError) {
        var total = 0
        for (name, value) in secrets {
            try Proto.checkVariableName(name, "secrets")
            total += name.utf8.count + value.utf8.count
        }
        guard total <= maxSecretBytes else { throw Proto.invalid("secrets hold \(total) bytes; at most \(maxSecretBytes) per service") }
    }

    static func accepted(_ accepted: PipelineEngine.Accepted) -> Slipway_Pipeline_V1_ActionResponse {
        var response = Slipway_Pipeline_V1_ActionResponse()
        response.deploymentId = accepted.deploymentID
        response.queuePosition = UInt32(accepted.position)
        response.duplicate = accepted.duplicate
        response.supersededDeploymentIds = accepted.superseded
        return response
    }

    static func project(_ project: Project) -> Slipway_Pipeline_V1_Project {
        var message = Slipway_Pipeline_V1_Project()
        message.id = project.id
        message.organizationId = project.organizationID
        message.name = project.name
        return message
    }

    static func environment(_ environment: DeploymentEnvironment) -> Slipway_Pipeline_V1_Environment {
        var message = Slipway_Pipeline_V1_Environment()
        message.id = environment.id
        message.projectId = environment.projectID
        message.name = environment.name
        return message
    }

    static func serviceStatus(_ state: PipelineStore.ServiceState) -> Slipway_Pipeline_V1_ServiceStatus {
        var message = Slipway_Pipeline_V1_ServiceStatus()
        message.serviceId = state.serviceID
        message.serviceName = state.name
        message.deploymentStatus = state.deploymentStatus.map(Proto.status) ?? .deploymentStatusUnspecified
        message.runningStatus = state.runningStatus.map(Proto.running) ?? .runningStatusUnspecified
        message.deploymentId = state.lastDeploymentID ?? ""
        return message
    }
}

extension PipelineStore.Failure: RPCErrorConvertible {
    public var rpcError: RPCError {
        switch self {
        case .notFound: RPCError(.notFound, description)
        case .alreadyExists, .taken: RPCError(.alreadyExists, description)
        case .quota: RPCError(.resourceExhausted, description)
        case .invalidTransition: RPCError(.failedPrecondition, description)
        }
    }
}

extension PipelineError: RPCErrorConvertible {
    public var rpcError: RPCError {
        switch self {
        case .invalidArgument: RPCError(.invalidArgument, description)
        case .failedPrecondition: RPCError(.failedPrecondition, description)
        case .resourceExhausted: RPCError(.resourceExhausted, description)
        }
    }
}

extension StatusHub.Overflow: RPCErrorConvertible {
    public var rpcError: RPCError { RPCError(.resourceExhausted, description) }
}
