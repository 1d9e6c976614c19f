import Foundation
import SlipwayProtos
import SlipwayRPC
import SlipwayServiceKit

/// `slipway.network.v1.Network` over the load balancer.
struct NetworkService: Slipway_Network_V1_Network.ServiceProtocol {
    let loadBalancer: LoadBalancer
    let checker: DomainChecker?


    func setRoute(request: Slipway_Network_V1_SetRouteRequest, context: ServerContext) async throws -> Slipway_Network_V1_RouteStatus {
        guard let message = request.route, let key = message.key else { throw RPCError(.invalidArgument, "route.key is required") }
        try Self.validate(key)
        var route = NetworkState.Route(
            environmentID: key.environmentId, serviceID: key.serviceId, serviceName: message.serviceName, environmentName: message.environmentName)
        route.customDomains = message.customDomains.map { $0.lowercased() }
        route.defaultLabel = message.defaultLabel.isEmpty ? nil : message.defaultLabel
        route.ownershipTokens = message.ownershipTokens.isEmpty ? nil : Dictionary(message.ownershipTokens.map { ($0.key.lowercased(), $0.value) }, uniquingKeysWith: { first, _ in first })
        route.pathPrefix = message.pathPrefix
        switch message.protocol {
        case .http: route.upstream = .http
        case .grpc: route.upstream = .grpc
        case .http2: route.upstream = .http2
        case .unrecognized(let value): throw RPCError(.invalidArgument, "route.protocol \(value) is not a known UpstreamProtocol")
        }
        let stored = try await loadBalancer.setRoute(route)
        if let checker, !stored.customDomains.isEmpty {
            // Checked at once, so the answer says where each custom domain stands.
            try? await Self.check(stored, checker: checker, loadBalancer: loadBalancer)
        }
        return await Self.status(try await loadBalancer.route(key: stored.key), loadBalancer)
    }

    func setBackends(request: Slipway_Network_V1_SetBackendsRequest, context: ServerContext) async throws -> Slipway_Network_V1_RouteStatus {
        guard let key = request.key else { throw RPCError(.invalidArgument, "key is required") }
        try Self.validate(key)
        let routeKey = NetworkState.Route.key(environmentID: key.environmentId, serviceID: key.serviceId)
        let reload = try await loadBalancer.setBackends(key: routeKey, backends: request.addresses)
        let timeout = Duration.seconds(Int(request.drainTimeoutSeconds == 0 ? 30 : min(request.drainTimeoutSeconds, 600)))
        _ = await loadBalancer.nginx.drain(reload, timeout: timeout)
        guard let route = await loadBalancer.state.routes[routeKey] else {
            // Backends of a route not set yet: kept for it, nothing routed.
            var status = Slipway_Network_V1_RouteStatus()
            var route = Slipway_Network_V1_Route()
            route.key = key
            status.route = route
            status.backends = request.addresses
            return status
        }
        return await Self.status(route, loadBalancer)
    }

    func deleteRoute(request key: Slipway_Network_V1_RouteKey, context: ServerContext) async throws -> Slipway_Network_V1_RouteStatus {
        try Self.validate(key)
        let route = try await loadBalancer.deleteRoute(key: NetworkState.Route.key(environmentID: key.environmentId, serviceID: key.serviceId))
        return await Self.status(route, loadBalancer)
    }

    func getRoute(request key: Slipway_Network_V1_RouteKey, context: ServerContext) async throws -> Slipway_Network_V1_RouteStatus {
        try Self.validate(key)
        let route = try await loadBalancer.route(key: NetworkState.Route.key(environmentID: key.environmentId, serviceID: key.serviceId))
        return await Self.status(route, loadBalancer)
    }

    func listRoutes(request: Slipway_Network_V1_ListRoutesRequest, context: ServerContext) async throws -> Slipway_Network_V1_ListRoutesResponse {
        var response = Slipway_Network_V1_ListRoutesResponse()
        let routes = await loadBalancer.state.routes.values
            .filter { request.environmentId.isEmpty || $0.environmentID == request.environmentId }
            .sorted { $0.key < $1.key }
        for route in routes { response.routes.append(await Self.status(route, loadBalancer)) }
        return response
    }

    func checkDomains(request key: Slipway_Network_V1_RouteKey, context: ServerContext) async throws -> Slipway_Network_V1_RouteStatus {
        try Self.validate(key)
        let routeKey = NetworkState.Route.key(environmentID: key.environmentId, serviceID: key.serviceId)
        let route = try await loadBalancer.route(key: routeKey)
        guard let checker else { throw RPCError(.failedPrecondition, "no DNS resolver is configured (--network-dns-resolver)") }
        try await Self.check(route, checker: checker, loadBalancer: loadBalancer)
        return await Self.status(try await loadBalancer.route(key: routeKey), loadBalancer)
    }

    func installCertificate(request: Slipway_Network_V1_InstallCertificateRequest, context: ServerContext) async throws -> Slipway_Network_V1_InstallCertificateResponse {
        let certificate = try await loadBalancer.installCertificate(chainPEM: request.certificateChainPem, keyPEM: request.privateKeyPem)
        var response = Slipway_Network_V1_InstallCertificateResponse()
        response.domains = certificate.domains
        response.notAfterUnixMillis = Int64(certificate.notAfter * 1000)
        return response
    }

    func presentChallenge(request: Slipway_Network_V1_ChallengeRequest, context: ServerContext) async throws -> Slipway_Network_V1_ChallengeResponse {
        try await loadBalancer.presentChallenge(token: request.token, keyAuthorization: request.keyAuthorization)
        return Slipway_Network_V1_ChallengeResponse()
    }

    func cleanUpChallenge(request: Slipway_Network_V1_ChallengeRequest, context: ServerContext) async throws -> Slipway_Network_V1_ChallengeResponse {
        try await loadBalancer.cleanUpChallenge(token: request.token)
        return Slipway_Network_V1_ChallengeResponse()
    }

    func getLoadBalancer(request: Slipway_Network_V1_LoadBalancerRequest, context: ServerContext) async throws -> Slipway_Network_V1_LoadBalancerStatus {
        var response = Slipway_Network_V1_LoadBalancerStatus()
        let settings = await loadBalancer.settings
        response.httpAddress = settings.httpListen
        response.httpsAddress = settings.httpsListen
        response.baseDomain = settings.baseDomain
        response.masterPid = loadBalancer.nginx.masterPID() ?? 0
        response.reloads = await loadBalancer.reloads
        return response
    }

    /// Checks the route's custom domains and records what was found.
    static func check(_ route: NetworkState.Route, checker: DomainChecker, loadBalancer: LoadBalancer) async throws {
        let defaultDomain = route.defaultDomain(base: await loadBalancer.settings.baseDomain)
        var checks: [String: NetworkState.DomainCheck] = [:]
        for domain in route.customDomains {
            let token = route.ownershipTokens?[domain]
            var check = await checker.check(domain, defaultDomain: defaultDomain, ownershipToken: token)
            check.token = token
            checks[domain] = check
        }
        try await loadBalancer.recordChecks(checks)
    }

    static func validate(_ key: Slipway_Network_V1_RouteKey) throws {
        for (value, field) in [(key.environmentId, "environment_id"), (key.serviceId, "service_id")] {
            // The platform's id alphabet: `/` (the key's separator) or spaces would let two keys meet.
            guard InputGrammar.isPlatformID(value) else {
                throw RPCError(.invalidArgument, "key.\(field) must be 1 to 128 of A-Z, a-z, 0-9, '.', '_' and '-'")
            }
        }
    }

    static func status(_ route: NetworkState.Route, _ loadBalancer: LoadBalancer) async -> Slipway_Network_V1_RouteStatus {
        let state = await loadBalancer.state
        let settings = await loadBalancer.settings
        var message = Slipway_Network_V1_RouteStatus()
        var key = Slipway_Network_V1_RouteKey()
        key.environmentId = route.environmentID
        key.serviceId = route.serviceID
        var routeMessage = Slipway_Network_V1_Route()
        routeMessage.key = key
        routeMessage.serviceName = route.serviceName
        routeMessage.environmentName = route.environmentName
        routeMessage.defaultLabel = route.defaultLabel ?? ""
        routeMessage.ownershipTokens = route.ownershipTokens ?? [:]
        routeMessage.customDomains = route.customDomains
        routeMessage.pathPrefix = route.pathPrefix
        routeMessage.protocol = switch route.upstream {
        case .http: .http
        case .grpc: .grpc
        case .http2: .http2
        }
        message.route = routeMessage
        let defaultDomain = route.defaultDomain(base: settings.baseDomain)
        message.defaultDomain = defaultDomain
        message.backends = state.backends(of: route)
        for domain in [defaultDomain] + route.customDomains {
            var status = Slipway_Network_V1_DomainStatus()
            status.domain = domain
            if domain == defaultDomain {
                status.state = .domainDefault
            } else if let check = state.check(of: domain, in: route) {
                status.state = switch check.state {
                case .pending: .domainPending
                case .verified: .domainVerified
                case .error: .domainError
                }
                status.reason = check.reason
                status.checkedUnixMillis = Int64(check.checkedAt * 1000)
            } else {
                status.state = .domainPending
                status.reason = "not checked yet"
            }
            if domain != defaultDomain, let token = route.ownershipTokens?[domain] {
                status.ownershipRecord = DomainChecker.ownershipRecord(domain)
                status.ownershipValue = token
            }
            if let certificate = state.certificate(for: domain) {
                status.tls = true
                status.certificateNotAfterUnixMillis = Int64(certificate.notAfter * 1000)
            }
            message.domains.append(status)
        }
        let tls = state.certificate(for: defaultDomain) != nil
        let listen = tls ? settings.httpsListen : settings.httpListen
        let port = Int(listen.split(separator: ":").last ?? "") ?? 0
        let defaultPort = tls ? 443 : 80
        message.url = "\(tls ? "https" : "http")://\(defaultDomain)\(port == defaultPort ? "" : ":\(port)")\(route.pathPrefix == "/" ? "/" : route.pathPrefix + "/")"
        return message
    }
}

extension LoadBalancer.Failure: RPCErrorConvertible {
    public var rpcError: RPCError {
        switch kind {
        case .invalid: RPCError(.invalidArgument, description)
        case .notFound: RPCError(.notFound, description)
        case .conflict, .refused: RPCError(.failedPrecondition, description)
        case .internalError: RPCError(.internal, description)
        }
    }
}

extension RouteValidation.Invalid: RPCErrorConvertible {
    public var rpcError: RPCError { RPCError(.invalidArgument, description) }
}
