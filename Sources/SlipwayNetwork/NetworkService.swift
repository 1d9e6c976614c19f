import Foundation
import SlipwayProtos
import SlipwayRPC

/// `slipway.network.v1.Network` over the load balancer.
struct NetworkService: RPCService {
    typealias API = Slipway_Network_V1_Network

    let loadBalancer: LoadBalancer
    let checker: DomainChecker?

    func register(with router: inout RPCRouter) {
        router.addFiles([Slipway_Network_V1_Network_proto.descriptor])
        let loadBalancer = self.loadBalancer
        let checker = self.checker
        router.unary(API.SetRoute.self) { request, _ in
            guard let message = request.route, let key = message.key else { throw RPCError(.invalidArgument, "route.key is required") }
            try Self.validate(key)
            var route = NetworkState.Route(
                environmentID: key.environmentId, serviceID: key.serviceId, serviceName: message.serviceName, environmentName: message.environmentName)
            route.customDomains = message.customDomains.map { $0.lowercased() }
            route.pathPrefix = message.pathPrefix
            switch message.protocol {
            case .http: route.upstream = .http
            case .grpc: route.upstream = .grpc
            case .http2: route.upstream = .http2
            case .unrecognized(let value): throw RPCError(.invalidArgument, "route.protocol \(value) is not a known UpstreamProtocol")
            }
            let stored = try await Self.mapped { try await loadBalancer.setRoute(route) }
            if let checker, !stored.customDomains.isEmpty {
                // Checked at once, so the answer says where each custom domain stands.
                try? await Self.check(stored, checker: checker, loadBalancer: loadBalancer)
            }
            return await Self.status(try await Self.mapped { try await loadBalancer.route(key: stored.key) }, loadBalancer)
        }
        router.unary(API.SetBackends.self) { request, _ in
            guard let key = request.key else { throw RPCError(.invalidArgument, "key is required") }
            try Self.validate(key)
            let routeKey = NetworkState.Route.key(environmentID: key.environmentId, serviceID: key.serviceId)
            let reload = try await Self.mapped { try await loadBalancer.setBackends(key: routeKey, backends: request.addresses) }
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
        router.unary(API.DeleteRoute.self) { key, _ in
            try Self.validate(key)
            let route = try await Self.mapped {
                try await loadBalancer.deleteRoute(key: NetworkState.Route.key(environmentID: key.environmentId, serviceID: key.serviceId))
            }
            return await Self.status(route, loadBalancer)
        }
        router.unary(API.GetRoute.self) { key, _ in
            try Self.validate(key)
            let route = try await Self.mapped {
                try await loadBalancer.route(key: NetworkState.Route.key(environmentID: key.environmentId, serviceID: key.serviceId))
            }
            return await Self.status(route, loadBalancer)
        }
        router.unary(API.ListRoutes.self) { request, _ in
            var response = Slipway_Network_V1_ListRoutesResponse()
            let routes = await loadBalancer.state.routes.values
                .filter { request.environmentId.isEmpty || $0.environmentID == request.environmentId }
                .sorted { $0.key < $1.key }
            for route in routes { response.routes.append(await Self.status(route, loadBalancer)) }
            return response
        }
        router.unary(API.CheckDomains.self) { key, _ in
            try Self.validate(key)
            let routeKey = NetworkState.Route.key(environmentID: key.environmentId, serviceID: key.serviceId)
            let route = try await Self.mapped { try await loadBalancer.route(key: routeKey) }
            guard let checker else { throw RPCError(.failedPrecondition, "no DNS resolver is configured (--network-dns-resolver)") }
            try await Self.mapped { try await Self.check(route, checker: checker, loadBalancer: loadBalancer) }
            return await Self.status(try await Self.mapped { try await loadBalancer.route(key: routeKey) }, loadBalancer)
        }
        router.unary(API.InstallCertificate.self) { request, _ in
            let certificate = try await Self.mapped {
                try await loadBalancer.installCertificate(chainPEM: request.certificateChainPem, keyPEM: request.privateKeyPem)
            }
            var response = Slipway_Network_V1_InstallCertificateResponse()
            response.domains = certificate.domains
            response.notAfterUnixMillis = Int64(certificate.notAfter * 1000)
            return response
        }
        router.unary(API.PresentChallenge.self) { request, _ in
            try await Self.mapped { try await loadBalancer.presentChallenge(token: request.token, keyAuthorization: request.keyAuthorization) }
            return Slipway_Network_V1_ChallengeResponse()
        }
        router.unary(API.CleanUpChallenge.self) { request, _ in
            try await Self.mapped { try await loadBalancer.cleanUpChallenge(token: request.token) }
            return Slipway_Network_V1_ChallengeResponse()
        }
        router.unary(API.GetLoadBalancer.self) { _, _ in
            var response = Slipway_Network_V1_LoadBalancerStatus()
            let settings = await loadBalancer.settings
            response.httpAddress = settings.httpListen
            response.httpsAddress = settings.httpsListen
            response.baseDomain = settings.baseDomain
            response.masterPid = loadBalancer.nginx.masterPID() ?? 0
            response.reloads = await loadBalancer.reloads
            return response
        }
    }

    /// Checks the route's custom domains and records what was found.
    static func check(_ route: NetworkState.Route, checker: DomainChecker, loadBalancer: LoadBalancer) async throws {
        let defaultDomain = route.defaultDomain(base: await loadBalancer.settings.baseDomain)
        var checks: [String: NetworkState.DomainCheck] = [:]
        for domain in route.customDomains { checks[domain] = await checker.check(domain, defaultDomain: defaultDomain) }
        try await loadBalancer.recordChecks(checks)
    }

    static func validate(_ key: Slipway_Network_V1_RouteKey) throws {
        for (value, field) in [(key.environmentId, "environment_id"), (key.serviceId, "service_id")] {
            guard !value.isEmpty, value.utf8.count <= 128, value.utf8.allSatisfy({ $0 > 32 && $0 < 127 }) else {
                throw RPCError(.invalidArgument, "key.\(field) must be 1 to 128 printable characters")
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
            } else if let check = state.domainChecks[domain] {
                status.state = switch check.state {
                case .pending: .domainPending
                case .verified: .domainVerified
                case .error: .domainError
                }
                status.reason = check.reason
                status.checkedUnixMillis = Int64(check.checkedAt * 1000)
            } else {
                status.state = .domainPending
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

    static func mapped<T: Sendable>(_ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch let failure as LoadBalancer.Failure {
            switch failure.kind {
            case .invalid: throw RPCError(.invalidArgument, failure.description)
            case .notFound: throw RPCError(.notFound, failure.description)
            case .conflict: throw RPCError(.failedPrecondition, failure.description)
            case .refused: throw RPCError(.failedPrecondition, failure.description)
            case .internalError: throw RPCError(.internal, failure.description)
            }
        } catch let invalid as RouteValidation.Invalid {
            throw RPCError(.invalidArgument, invalid.description)
        }
    }
}
