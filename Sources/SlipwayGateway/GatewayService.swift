import Foundation
import Logging
import SlipwayProtobuf
import SlipwayProtos
import SlipwayRPC

/// `slipway.api.v1.Slipway`: the public API. Each call is authenticated, rate limited and checked
/// against the token's scope and role, then forwarded to the pipeline or logs service.
struct GatewayService: Slipway_Api_V1_Slipway.ServiceProtocol {    typealias Pipeline = Slipway_Pipeline_V1_Pipeline
    typealias Logs = Slipway_Logs_V1_Logs

    let auth: Authenticator
    let ownership: Ownership
    let pipeline: Pipeline.Client
    let logs: Logs.Client
    let network: Slipway_Network_V1_Network.Client
    let webhooks: WebhookReceiver
    let logger: Logger

    /// Limits of the API (docs/limits.md).
    static let maxTokenNameBytes = 63
    static let maxIdempotencyKeyBytes = 200
    static let maxTokensPerOrganization = 1000

    // MARK: Calls

    /// Authenticates the call, takes it from the token's rate and checks the role.
    func principal(_ context: ServerContext, _ role: Role = .viewer) throws(RPCError) -> Principal {
        let principal = try auth.authenticate(bearer: context.metadata["authorization"])
        try auth.admit(principal)
        try principal.require(role, String(context.path.split(separator: "/").last ?? ""))
        return principal
    }

    /// Forwards with what is left of the caller's deadline.
    static func options(_ context: ServerContext) -> CallOptions {
        guard let deadline = context.deadline else { return CallOptions() }
        return CallOptions(timeout: max(.zero, deadline - .now))
    }

    func trigger(_ principal: Principal, _ context: ServerContext, key: String) throws(RPCError) -> Slipway_Pipeline_V1_Trigger {
        guard key.utf8.count <= Self.maxIdempotencyKeyBytes else {
            throw RPCError(.invalidArgument, "idempotency_key is longer than \(Self.maxIdempotencyKeyBytes) bytes")
        }
        var trigger = Slipway_Pipeline_V1_Trigger()
        switch context.metadata["x-slipway-origin"]?.lowercased() {
        case "cli": trigger.origin = .cli
        case "console": trigger.origin = .console
        default: trigger.origin = .api
        }
        trigger.triggeredBy = "token:\(principal.name)"
        // Keys are per token, so two tokens cannot collide on (or probe) each other's keys.
        trigger.idempotencyKey = key.isEmpty ? "" : "\(principal.tokenID):\(key)"
        return trigger
    }

    // MARK: Tokens

    func whoAmI(request: Slipway_Api_V1_WhoAmIRequest, context: ServerContext) async throws -> Slipway_Api_V1_Token {
        let principal = try self.principal(context)
        guard let record = try auth.store.token(id: principal.tokenID) else { throw RPCError(.unauthenticated, "the token is gone") }
        return Self.token(record)
    }

    func createToken(request: Slipway_Api_V1_CreateTokenRequest, context: ServerContext) async throws -> Slipway_Api_V1_CreateTokenResponse {
        let principal = try self.principal(context, .admin)
        guard !request.name.isEmpty, request.name.utf8.count <= Self.maxTokenNameBytes,
            request.name.utf8.allSatisfy({ ($0 >= 48 && $0 <= 57) || ($0 >= 65 && $0 <= 90) || ($0 >= 97 && $0 <= 122) || $0 == 45 || $0 == 95 || $0 == 46 })
        else {
            throw RPCError(.invalidArgument, "name must be 1 to \(Self.maxTokenNameBytes) letters, digits, '-', '_' or '.', got \"\(request.name.prefix(80))\"")
        }
        guard request.role.normalized != nil else { throw RPCError(.invalidArgument, "role must be VIEWER, DEPLOYER or ADMIN") }
        return try await create(request, principal)
    }

    private func create(_ request: Slipway_Api_V1_CreateTokenRequest, _ principal: Principal) async throws -> Slipway_Api_V1_CreateTokenResponse {
        try checkID(request.organizationId, "organization_id")
        if request.projectId.isEmpty {
            guard principal.sees(organizationID: request.organizationId), principal.projectID.isEmpty else {
                throw RPCError(.permissionDenied, "token \"\(principal.name)\" cannot create tokens for organization \(request.organizationId)")
            }
            var list = Slipway_Pipeline_V1_ListProjectsRequest()
            list.organizationId = request.organizationId
            _ = try await pipeline.listProjects(list)  // NOT_FOUND for an unknown organization
        } else {
            let owner = try await ownership.project(request.projectId, for: principal)
            guard owner.organizationID == request.organizationId else {
                throw RPCError(.invalidArgument, "project \(request.projectId) is not in organization \(request.organizationId)")
            }
        }
        let effective = request.rateLimitPerSecond == 0 ? auth.defaultRateLimit : request.rateLimitPerSecond
        if !principal.isPlatform, effective > principal.rateLimit {
            throw RPCError(.permissionDenied, "a rate of \(effective) requests/s is above the creating token's own (\(principal.rateLimit)); ask for at most that")
        }
        if try auth.store.tokens(organizationID: request.organizationId).filter({ $0.revokedAt == 0 }).count >= Self.maxTokensPerOrganization {
            throw RPCError(.resourceExhausted, "organization \(request.organizationId) already has \(Self.maxTokensPerOrganization) valid tokens (the limit); revoke some first")
        }
        let secret = Authenticator.newSecret()
        let record = GatewayStore.TokenRecord(
            id: secret.id, name: request.name, secretHash: secret.hash, organizationID: request.organizationId, projectID: request.projectId,
            role: request.role.rawValue, rateLimit: request.rateLimitPerSecond, createdAt: nowMillis(), createdBy: principal.name)
        try auth.store.insert(record)
        var response = Slipway_Api_V1_CreateTokenResponse()
        response.token = Self.token(record)
        response.secret = secret.text
        return response
    }
    func listTokens(request: Slipway_Api_V1_ListTokensRequest, context: ServerContext) async throws -> Slipway_Api_V1_ListTokensResponse {
        let principal = try self.principal(context, .admin)
        guard principal.sees(organizationID: request.organizationId) else {
            throw RPCError(.notFound, "organization \(request.organizationId) does not exist")
        }
        var response = Slipway_Api_V1_ListTokensResponse()
        response.tokens = try auth.store.tokens(organizationID: request.organizationId)
            .filter { principal.projectID.isEmpty || $0.projectID == principal.projectID }
            .map(Self.token)
        return response
    }

    func revokeToken(request: Slipway_Api_V1_RevokeTokenRequest, context: ServerContext) async throws -> Slipway_Api_V1_Token {
        let principal = try self.principal(context, .admin)
        try checkID(request.tokenId, "token_id")
        guard let record = try auth.store.token(id: request.tokenId),
            principal.covers(organizationID: record.organizationID, projectID: record.projectID.isEmpty ? nil : record.projectID),
            principal.projectID.isEmpty || record.projectID == principal.projectID
        else {
            throw RPCError(.notFound, "token \(request.tokenId) does not exist")
        }
        guard let revoked = try auth.store.revoke(id: record.id, at: nowMillis()) else { throw RPCError(.notFound, "token \(request.tokenId) does not exist") }
        return Self.token(revoked)
    }

    static func token(_ record: GatewayStore.TokenRecord) -> Slipway_Api_V1_Token {
        var token = Slipway_Api_V1_Token()
        token.id = record.id
        token.name = record.name
        token.organizationId = record.organizationID
        token.projectId = record.projectID
        token.role = Role(rawValue: record.role)
        token.createdUnixMillis = record.createdAt
        token.revokedUnixMillis = record.revokedAt
        token.rateLimitPerSecond = record.rateLimit
        token.createdBy = record.createdBy
        return token
    }

    // MARK: Model

    func createOrganization(request: Slipway_Pipeline_V1_CreateOrganizationRequest, context: ServerContext) async throws -> Slipway_Pipeline_V1_Organization {
        let principal = try self.principal(context, .admin)
        guard principal.isPlatform else {
            throw RPCError(.permissionDenied, "only the platform's admin token creates organizations; token \"\(principal.name)\" belongs to one")
        }
        return try await pipeline.createOrganization(request, options: Self.options(context))
    }

    func listOrganizations(request: Slipway_Pipeline_V1_ListOrganizationsRequest, context: ServerContext) async throws -> Slipway_Pipeline_V1_ListOrganizationsResponse {
        let principal = try self.principal(context)
        var response = try await pipeline.listOrganizations(request, options: Self.options(context))
        response.organizations = response.organizations.filter { principal.sees(organizationID: $0.id) }
        return response
    }

    func getOrganizationQuotas(
        request: Slipway_Pipeline_V1_GetOrganizationQuotasRequest, context: ServerContext
    ) async throws -> Slipway_Pipeline_V1_OrganizationQuotas {
        let principal = try self.principal(context)
        guard principal.sees(organizationID: request.organizationId) else {
            throw RPCError(.notFound, "organization \(request.organizationId) does not exist")
        }
        return try await pipeline.getOrganizationQuotas(request, options: Self.options(context))
    }

    func createProject(request: Slipway_Pipeline_V1_CreateProjectRequest, context: ServerContext) async throws -> Slipway_Pipeline_V1_Project {
        let principal = try self.principal(context, .admin)
        guard principal.sees(organizationID: request.organizationId) else {
            throw RPCError(.notFound, "organization \(request.organizationId) does not exist")
        }
        guard principal.projectID.isEmpty else {
            throw RPCError(.permissionDenied, "token \"\(principal.name)\" is scoped to one project and cannot create projects")
        }
        let project = try await pipeline.createProject(request, options: Self.options(context))
        ownership.remember(project: project.id, organization: project.organizationId)
        return project
    }

    func listProjects(request: Slipway_Pipeline_V1_ListProjectsRequest, context: ServerContext) async throws -> Slipway_Pipeline_V1_ListProjectsResponse {
        let principal = try self.principal(context)
        guard principal.sees(organizationID: request.organizationId) else {
            throw RPCError(.notFound, "organization \(request.organizationId) does not exist")
        }
        var response = try await pipeline.listProjects(request, options: Self.options(context))
        response.projects = response.projects.filter { principal.covers(organizationID: $0.organizationId, projectID: $0.id) }
        return response
    }

    func createEnvironment(request: Slipway_Pipeline_V1_CreateEnvironmentRequest, context: ServerContext) async throws -> Slipway_Pipeline_V1_Environment {
        let principal = try self.principal(context, .admin)
        let owner = try await ownership.project(request.projectId, for: principal)
        let environment = try await pipeline.createEnvironment(request, options: Self.options(context))
        ownership.remember(environment: environment.id, owner: owner)
        return environment
    }

    func listEnvironments(request: Slipway_Pipeline_V1_ListEnvironmentsRequest, context: ServerContext) async throws -> Slipway_Pipeline_V1_ListEnvironmentsResponse {
        let principal = try self.principal(context)
        _ = try await ownership.project(request.projectId, for: principal)
        return try await pipeline.listEnvironments(request, options: Self.options(context))
    }

    func createService(request: Slipway_Pipeline_V1_CreateServiceRequest, context: ServerContext) async throws -> Slipway_Pipeline_V1_Service {
        let principal = try self.principal(context, .admin)
        _ = try await ownership.environment(request.environmentId, for: principal)
        let service = try await pipeline.createService(request, options: Self.options(context))
        ownership.remember(service: service.id, environment: service.environmentId)
        return service
    }

    func updateService(request: Slipway_Pipeline_V1_UpdateServiceRequest, context: ServerContext) async throws -> Slipway_Pipeline_V1_Service {
        let principal = try self.principal(context, .admin)
        _ = try await ownership.service(request.serviceId, for: principal)
        return try await pipeline.updateService(request, options: Self.options(context))
    }

    func getService(request: Slipway_Pipeline_V1_GetServiceRequest, context: ServerContext) async throws -> Slipway_Pipeline_V1_Service {
        let principal = try self.principal(context)
        _ = try await ownership.service(request.serviceId, for: principal)
        return try await pipeline.getService(request, options: Self.options(context))
    }

    func getRoute(request: Slipway_Api_V1_GetRouteRequest, context: ServerContext) async throws -> Slipway_Api_V1_ServiceRoute {
        let principal = try self.principal(context)
        var key = Slipway_Network_V1_RouteKey()
        key.environmentId = try await ownership.service(request.serviceId, for: principal)
        key.serviceId = request.serviceId
        let status: Slipway_Network_V1_RouteStatus
        do {
            status = try await network.getRoute(key, options: Self.options(context))
        } catch let error as RPCError where error.code == .notFound {
            throw RPCError(.notFound, "service \(request.serviceId) has no route yet: it gets one when a deployment with a public port reaches ROUTER_DEPLOYMENT")
        }
        var route = Slipway_Api_V1_ServiceRoute()
        route.serviceId = request.serviceId
        route.url = status.url
        route.defaultDomain = status.defaultDomain
        route.customDomains = status.domains.filter { $0.domain != status.defaultDomain }.map { domain in
            var custom = Slipway_Api_V1_CustomDomain()
            custom.domain = domain.domain
            custom.state = domain.state.protoName.replacingOccurrences(of: "DOMAIN_", with: "")
            custom.reason = domain.reason
            custom.tls = domain.tls
            custom.txtName = domain.ownershipRecord
            custom.txtValue = domain.ownershipValue
            return custom
        }
        return route
    }

    func listServices(request: Slipway_Pipeline_V1_ListServicesRequest, context: ServerContext) async throws -> Slipway_Pipeline_V1_ListServicesResponse {
        let principal = try self.principal(context)
        _ = try await ownership.environment(request.environmentId, for: principal)
        return try await pipeline.listServices(request, options: Self.options(context))
    }

    // MARK: Actions

    /// Checks every named service is in the environment (a token cannot act on another environment's
    /// service through an environment it may see).
    func checkServices(_ ids: [String], in environment: String, _ principal: Principal) async throws {
        for id in ids where try await ownership.service(id, for: principal) != environment {
            throw RPCError(.invalidArgument, "service \(id) is not in environment \(environment)")
        }
    }

    func deploy(request: Slipway_Api_V1_DeployRequest, context: ServerContext) async throws -> Slipway_Pipeline_V1_ActionResponse {
        let principal = try self.principal(context, .deployer)
        _ = try await ownership.environment(request.environmentId, for: principal)
        try await checkServices(request.serviceIds, in: request.environmentId, principal)
        var forwarded = Slipway_Pipeline_V1_DeployRequest()
        forwarded.environmentId = request.environmentId
        forwarded.serviceIds = request.serviceIds
        forwarded.versions = request.versions
        forwarded.trigger = try trigger(principal, context, key: request.idempotencyKey)
        return try await pipeline.deploy(forwarded, options: Self.options(context))
    }

    func redeploy(request: Slipway_Api_V1_EnvironmentActionRequest, context: ServerContext) async throws -> Slipway_Pipeline_V1_ActionResponse {
        try await forward(request, context, .deployer) { try await pipeline.redeploy($0, options: $1) }
    }

    func restart(request: Slipway_Api_V1_EnvironmentActionRequest, context: ServerContext) async throws -> Slipway_Pipeline_V1_ActionResponse {
        try await forward(request, context, .deployer) { try await pipeline.restart($0, options: $1) }
    }

    func stop(request: Slipway_Api_V1_EnvironmentActionRequest, context: ServerContext) async throws -> Slipway_Pipeline_V1_ActionResponse {
        try await forward(request, context, .deployer) { try await pipeline.stop($0, options: $1) }
    }

    func delete(request: Slipway_Api_V1_EnvironmentActionRequest, context: ServerContext) async throws -> Slipway_Pipeline_V1_ActionResponse {
        try await forward(request, context, .admin) { try await pipeline.delete($0, options: $1) }
    }

    /// An environment action: scope and role checked, then the pipeline's method with the trigger.
    private func forward(
        _ request: Slipway_Api_V1_EnvironmentActionRequest, _ context: ServerContext, _ role: Role,
        _ call: (Slipway_Pipeline_V1_ActionRequest, CallOptions) async throws -> Slipway_Pipeline_V1_ActionResponse
    ) async throws -> Slipway_Pipeline_V1_ActionResponse {
        let principal = try self.principal(context, role)
        _ = try await ownership.environment(request.environmentId, for: principal)
        try await checkServices(request.serviceIds, in: request.environmentId, principal)
        var forwarded = Slipway_Pipeline_V1_ActionRequest()
        forwarded.environmentId = request.environmentId
        forwarded.serviceIds = request.serviceIds
        forwarded.trigger = try trigger(principal, context, key: request.idempotencyKey)
        return try await call(forwarded, Self.options(context))
    }

    func rollback(request: Slipway_Api_V1_RollbackRequest, context: ServerContext) async throws -> Slipway_Pipeline_V1_ActionResponse {
        let principal = try self.principal(context, .deployer)
        _ = try await ownership.service(request.serviceId, for: principal)
        // Restoring a release's configuration and secrets is changing them: an admin's job.
        if !request.imageOnly, principal.role.rawValue < Role.admin.rawValue {
            throw RPCError(
                .permissionDenied,
                "rolling back to release \(request.releaseId) restores its configuration and secrets, which needs ADMIN; as \(principal.role.protoName), roll back the image only (image_only, slipway rollback --image-only)")
        }
        var forwarded = Slipway_Pipeline_V1_RollbackRequest()
        forwarded.serviceId = request.serviceId
        forwarded.releaseId = request.releaseId
        forwarded.imageOnly = request.imageOnly
        forwarded.trigger = try trigger(principal, context, key: request.idempotencyKey)
        return try await pipeline.rollback(forwarded, options: Self.options(context))
    }

    func cancel(request: Slipway_Pipeline_V1_CancelRequest, context: ServerContext) async throws -> Slipway_Pipeline_V1_CancelResponse {
        let principal = try self.principal(context, .deployer)
        _ = try await ownership.deployment(request.deploymentId, for: principal)
        return try await pipeline.cancel(request, options: Self.options(context))
    }

    func deployImage(request: Slipway_Api_V1_DeployImageRequest, context: ServerContext) async throws -> Slipway_Api_V1_DeployImageResponse {
        let principal = try self.principal(context, .deployer)
        guard !request.image.isEmpty, !request.tag.isEmpty else { throw RPCError(.invalidArgument, "image and tag are required") }
        let organization = principal.isPlatform ? request.organizationId : principal.organizationID
        guard !organization.isEmpty else { throw RPCError(.invalidArgument, "organization_id is required with the platform token") }
        guard principal.sees(organizationID: organization) else { throw RPCError(.notFound, "organization \(organization) does not exist") }
        var scoped = principal
        scoped.organizationID = organization
        try await ownership.refresh(scoped)
        var response = Slipway_Api_V1_DeployImageResponse()
        let environments = ownership.environments(in: organization)
        for (environment, owner) in environments.sorted(by: { $0.key < $1.key }) where principal.covers(organizationID: organization, projectID: owner.projectID) {
            var list = Slipway_Pipeline_V1_ListServicesRequest()
            list.environmentId = environment
            let matching = try await pipeline.listServices(list).services.filter { service in
                guard case .container(let container)? = service.config?.source else { return false }
                return container.image == request.image && (service.config?.autoDeploy?.enabled ?? false)
                    && ![.stopped, .stopQueued, .stopping, .deleted, .deleteQueued, .deleting].contains(service.deploymentStatus)
            }
            guard !matching.isEmpty else { continue }
            var deploy = Slipway_Pipeline_V1_DeployRequest()
            deploy.environmentId = environment
            deploy.serviceIds = matching.map(\.id)
            for service in matching { deploy.versions[service.id] = request.tag }
            deploy.trigger = try trigger(principal, context, key: request.idempotencyKey.isEmpty ? "" : "\(request.idempotencyKey):\(environment)")
            let accepted = try await pipeline.deploy(deploy, options: Self.options(context))
            for service in matching {
                var deployed = Slipway_Api_V1_DeployedService()
                deployed.serviceId = service.id
                deployed.environmentId = environment
                deployed.deployment = accepted
                response.deployed.append(deployed)
            }
        }
        return response
    }

    // MARK: Reads

    func getDeployment(request: Slipway_Pipeline_V1_GetDeploymentRequest, context: ServerContext) async throws -> Slipway_Pipeline_V1_Deployment {
        let principal = try self.principal(context)
        _ = try await ownership.deployment(request.deploymentId, for: principal)
        return try await pipeline.getDeployment(request, options: Self.options(context))
    }

    func listDeployments(request: Slipway_Pipeline_V1_ListDeploymentsRequest, context: ServerContext) async throws -> Slipway_Pipeline_V1_ListDeploymentsResponse {
        let principal = try self.principal(context)
        _ = try await ownership.environment(request.environmentId, for: principal)
        if !request.serviceId.isEmpty { try await checkServices([request.serviceId], in: request.environmentId, principal) }
        return try await pipeline.listDeployments(request, options: Self.options(context))
    }

    func listReleases(request: Slipway_Pipeline_V1_ListReleasesRequest, context: ServerContext) async throws -> Slipway_Pipeline_V1_ListReleasesResponse {
        let principal = try self.principal(context)
        _ = try await ownership.service(request.serviceId, for: principal)
        return try await pipeline.listReleases(request, options: Self.options(context))
    }

    func getEnvironmentStatus(request: Slipway_Pipeline_V1_GetEnvironmentStatusRequest, context: ServerContext) async throws -> Slipway_Pipeline_V1_EnvironmentStatus {
        let principal = try self.principal(context)
        _ = try await ownership.environment(request.environmentId, for: principal)
        return try await pipeline.getEnvironmentStatus(request, options: Self.options(context))
    }

    func watch(request: Slipway_Pipeline_V1_WatchRequest, response writer: ResponseWriter<Slipway_Pipeline_V1_StatusEvent>, context: ServerContext) async throws {
        let principal = try self.principal(context)
        _ = try await ownership.environment(request.environmentId, for: principal)
        if !request.deploymentId.isEmpty { _ = try await ownership.deployment(request.deploymentId, for: principal) }
        let release = try auth.openStream(principal)
        defer { release() }
        try await pipeline.watch(request) { events in
            for try await event in events { try await writer.write(event) }
        }
    }

    // MARK: Logs and webhooks

    /// The logs service's request for a public one, after the scope check.
    func tailRequest(_ request: Slipway_Api_V1_LogsRequest, _ principal: Principal) async throws -> Slipway_Logs_V1_TailRequest {
        var tail = Slipway_Logs_V1_TailRequest()
        var key = Slipway_Logs_V1_StreamKey()
        if !request.deploymentId.isEmpty {
            key.environmentId = try await ownership.deployment(request.deploymentId, for: principal)
            key.deploymentId = request.deploymentId
        } else if !request.serviceId.isEmpty {
            key.environmentId = try await ownership.service(request.serviceId, for: principal)
            key.serviceId = request.serviceId
        } else if !request.environmentId.isEmpty {
            _ = try await ownership.environment(request.environmentId, for: principal)
            key.environmentId = request.environmentId
        } else {
            throw RPCError(.invalidArgument, "give deployment_id (deployment logs), service_id or environment_id (application logs)")
        }
        tail.stream = key
        switch request.start {
        case .afterSeq(let value)?: tail.start = .afterSeq(value)
        case .sinceNanos(let value)?: tail.start = .sinceNanos(value)
        case .liveOnly(let value)?: tail.start = .liveOnly(value)
        case nil: break
        }
        tail.filter = request.filter
        return tail
    }

    /// Streams log lines to `write` until the subscriber goes or the stream fails.
    func tail(_ request: Slipway_Api_V1_LogsRequest, _ principal: Principal, write: @Sendable (Slipway_Logs_V1_TailResponse) async throws -> Void) async throws {
        let tail = try await tailRequest(request, principal)
        let release = try auth.openStream(principal)
        defer { release() }
        try await logs.tail(tail) { responses in
            for try await response in responses { try await write(response) }
        }
    }

    func tailLogs(request: Slipway_Api_V1_LogsRequest, response writer: ResponseWriter<Slipway_Logs_V1_TailResponse>, context: ServerContext) async throws {
        let principal = try self.principal(context)
        try await tail(request, principal) { try await writer.write($0) }
    }

    func queryLogs(request: Slipway_Api_V1_LogsQueryRequest, context: ServerContext) async throws -> Slipway_Logs_V1_QueryResponse {
        let principal = try self.principal(context)
        var query = Slipway_Logs_V1_QueryRequest()
        var key = Slipway_Logs_V1_StreamKey()
        if !request.deploymentId.isEmpty {
            key.environmentId = try await ownership.deployment(request.deploymentId, for: principal)
            key.deploymentId = request.deploymentId
        } else {
            key.environmentId = try await ownership.service(request.serviceId, for: principal)
            key.serviceId = request.serviceId
        }
        query.stream = key
        query.sinceNanos = request.sinceNanos
        query.untilNanos = request.untilNanos
        query.filter = request.filter
        query.pageSize = request.pageSize
        query.pageToken = request.pageToken
        return try await logs.query(query, options: Self.options(context))
    }

    func createWebhook(request: Slipway_Api_V1_CreateWebhookRequest, context: ServerContext) async throws -> Slipway_Api_V1_Webhook {
        let principal = try self.principal(context, .admin)
        _ = try await ownership.service(request.serviceId, for: principal)
        return try webhooks.create(serviceID: request.serviceId)
    }

    func listDeliveries(request: Slipway_Api_V1_ListDeliveriesRequest, context: ServerContext) async throws -> Slipway_Api_V1_ListDeliveriesResponse {
        let principal = try self.principal(context)
        _ = try await ownership.service(request.serviceId, for: principal)
        guard request.pageSize <= 500 else { throw RPCError(.invalidArgument, "page_size is at most 500") }
        var response = Slipway_Api_V1_ListDeliveriesResponse()
        response.deliveries = try auth.store.deliveries(serviceID: request.serviceId, limit: Int(request.pageSize == 0 ? 20 : request.pageSize))
            .map(WebhookReceiver.message)
        return response
    }
}

extension Role {
    /// The role when it is one of the three, nil otherwise.
    var normalized: Role? {
        switch self {
        case .viewer, .deployer, .admin: self
        default: nil
        }
    }
}
