import SlipwayProtos
import SlipwayRPC

/// ROUTER_DEPLOYMENT over the network service (`slipway.network.v1.Network`): the service's route —
/// its default domain `<domain label>.<base domain>` (the label unique across the platform), its custom domains, the protocol of its
/// public port. The instances behind it are set by the cluster during the rollout.
public struct NetworkCollaboratorRPC: NetworkCollaborator {
    typealias API = Slipway_Network_V1_Network

    let client: API.Client
    let store: PipelineStore

    /// `store`: which custom domains the service holds when the step runs, and their ownership values.
    public init(client: RPCClient, store: PipelineStore) {
        self.client = API.Client(wrapping: client)
        self.store = store
    }

    public func route(_ work: ServiceWork) async throws {
        var route = Slipway_Network_V1_Route()
        route.key = Self.key(work)
        route.serviceName = work.service.name.lowercased()
        route.environmentName = work.environment.name.lowercased()
        route.defaultLabel = work.service.domainLabel
        // Only the domains the service holds now: the configuration deployed may be older (a
        // rollback, a deployment planned before an update) and name a domain another service took
        // since; the network gives a domain claimed with a token to the route that claims it.
        let held = try store.claimedDomains(serviceID: work.service.id)
        route.customDomains = work.service.configuration.customDomains.map { $0.lowercased() }.filter(held.contains)
        // Verified only with the organization's TXT record: a domain pointing here is not yet its.
        for domain in route.customDomains { route.ownershipTokens[domain] = store.ownershipToken(organizationID: work.organizationID, domain: domain) }
        if work.service.configuration.ports.first(where: \.isPublic)?.kind == .grpc { route.protocol = .grpc }
        var request = Slipway_Network_V1_SetRouteRequest()
        request.route = route
        _ = try await stepCall("slipway-network") { try await client.setRoute(request) }
    }

    public func removeRoutes(_ work: ServiceWork) async throws {
        _ = try await stepCall("slipway-network") { () async throws -> Bool in
            do {
                _ = try await client.deleteRoute(Self.key(work))
                return true
            } catch let error as RPCError where error.code == .notFound {
                return false  // Never routed, or already removed: nothing to do.
            }
        }
    }

    static func key(_ work: ServiceWork) -> Slipway_Network_V1_RouteKey {
        var key = Slipway_Network_V1_RouteKey()
        key.environmentId = work.environment.id
        key.serviceId = work.service.id
        return key
    }
}

/// CERTIFICATE over the certs service (`slipway.certs.v1.Certs`): a certificate for the route's
/// default domain (the local CA signs `*.localhost`), and one for its verified custom domains (they
/// point at the load balancer and their ownership record holds the organization's value). Custom
/// domains still pending do not fail the deployment (the app serves on its default domain): the
/// step's message names them with what to add; their certificate comes with the next deployment
/// once they are verified.
public struct CertificateCollaboratorRPC: CertificateCollaborator {
    let network: Slipway_Network_V1_Network.Client
    let certs: Slipway_Certs_V1_Certs.Client

    public init(network: RPCClient, certs: RPCClient) {
        self.network = .init(wrapping: network)
        self.certs = .init(wrapping: certs)
    }

    public func certificate(_ work: ServiceWork) async throws -> String {
        let status = try await stepCall("slipway-network") { try await network.getRoute(NetworkCollaboratorRPC.key(work)) }
        try await issue([status.defaultDomain])
        let custom = status.domains.filter { $0.domain != status.defaultDomain }
        let verified = custom.filter { $0.state == .domainVerified }.map(\.domain)
        if !verified.isEmpty { try await issue(verified) }
        let waiting = custom.filter { $0.state != .domainVerified }
        guard !waiting.isEmpty else { return "" }
        let reasons = waiting.map { "\($0.domain): \($0.reason.isEmpty ? "not checked yet" : $0.reason)" }
        return "custom domains not verified yet (routed once verified; their certificate comes with the next deployment after that) — \(reasons.joined(separator: "; "))"
    }

    private func issue(_ domains: [String]) async throws {
        var request = Slipway_Certs_V1_IssueRequest()
        request.domains = domains
        let certificate = try await stepCall("slipway-certs") {
            try await certs.issue(request, options: CallOptions(timeout: .seconds(300)))
        }
        guard certificate.state == .certificateIssued else {
            throw StepFailure("certificate for \(domains.joined(separator: ", ")) not issued: \(certificate.reason)")
        }
    }
}

/// A collaborator's refusal becomes the step's failure with its message; cancellation stays
/// cancellation; a collaborator that cannot be reached (UNAVAILABLE) is named, and the step waits for it.
func stepCall<T: Sendable>(_ service: String, _ body: () async throws -> T) async throws -> T {
    do {
        return try await body()
    } catch let error as RPCError where error.code == .unavailable {
        throw StepFailure("\(service) is unavailable: \(error.message)", isUnavailable: true)
    } catch let error as RPCError where error.code != .cancelled {
        throw StepFailure(error.message)
    }
}
