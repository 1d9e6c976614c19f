import Foundation
import SlipwayTestSupport
import Testing

@testable import SlipwayNetwork

/// The network service's Kubernetes objects, validated against Kubernetes' published schemas by
/// `kubernetes-validate --strict` (as the cluster's manifests are). The schemas check structure,
/// types, required and unknown fields, but not enums, object names or hosts (`pathType: Fuzzy`,
/// `name: Web_X` and `host: Bad_Host..x` all pass them), so those are checked here against the
/// Kubernetes grammars.
///
/// Coupling with SlipwayCluster, which this target cannot import: the namespace, the Service's name
/// and its port name asserted here are what `KubernetesManifests` produces for the same service
/// (`slipway-env-4f2a9c`, `web`, `http`; see KubernetesManifestsTests). Change both or neither.
@Suite struct IngressManifestsTests {
    static let base = "apps.example.net"

    static func certificate(_ id: Character, _ domains: [String], notAfter: Double) -> NetworkState.Certificate {
        .init(id: String(repeating: id, count: 64), domains: domains, notAfter: notAfter, installedAt: 1_700_000_000)
    }

    static let wildcard = certificate("a", ["*.apps.example.net"], notAfter: 2_000_000_000)
    static let www = certificate("b", ["www.example.com", "example.com"], notAfter: 1_900_000_000)
    /// The certificate `www` renewed: same names, older, still installed.
    static let wwwBefore = certificate("c", ["example.com", "www.example.com"], notAfter: 1_800_000_000)
    static let unrelated = certificate("d", ["api.example.com"], notAfter: 2_100_000_000)
    static let certificates = [wwwBefore, unrelated, wildcard, www]

    static func webRoute() -> NetworkState.Route {
        var route = NetworkState.Route(environmentID: "env_4f2a9c", serviceID: "svc_81be", serviceName: "web", environmentName: "prod")
        route.customDomains = ["www.example.com", "example.org"]
        return route
    }

    static func grpcRoute(_ upstream: NetworkState.UpstreamProtocol = .grpc) -> NetworkState.Route {
        var route = NetworkState.Route(environmentID: "env_4f2a9c", serviceID: "svc_77c0", serviceName: "greeter", environmentName: "prod")
        route.pathPrefix = "/helloworld.Greeter"
        route.upstream = upstream
        return route
    }

    /// The objects checked by `kubernetes-validate --strict` against the published schemas.
    static func validate(_ objects: [[String: Any]]) async throws -> (Bool, String) {
        try await KubernetesSchemas.validate(objects, encode: { try IngressManifests.json($0) })
    }

    // MARK: Kubernetes grammars (apimachinery validation)

    /// RFC 1123 label: what namespaces and label-sized names must be.
    static func isDNSLabel(_ text: String) -> Bool {
        text.utf8.count <= 63 && text.wholeMatch(of: try! Regex("[a-z0-9]([-a-z0-9]*[a-z0-9])?")) != nil
    }

    /// RFC 1123 subdomain: what most object names (Ingress, Secret) must be.
    static func isDNSSubdomain(_ text: String) -> Bool {
        text.utf8.count <= 253 && text.wholeMatch(of: try! Regex("[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")) != nil
    }

    static func isLabelValue(_ text: String) -> Bool {
        text.utf8.count <= 63 && text.wholeMatch(of: try! Regex("(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")) != nil
    }

    /// An Ingress rule's host: a DNS subdomain, or `*.` and one.
    static func isIngressHost(_ text: String) -> Bool {
        isDNSSubdomain(text.hasPrefix("*.") ? String(text.dropFirst(2)) : text) && text.split(separator: ".").allSatisfy { $0 == "*" || isDNSLabel(String($0)) }
    }

    /// Names, labels, hosts and path types of an object, checked where the schemas do not.
    static func expectKubernetesGrammar(_ object: [String: Any]) throws {
        let metadata = try #require(object["metadata"] as? [String: Any])
        let name = try #require(metadata["name"] as? String)
        #expect(isDNSSubdomain(name) && isDNSLabel(name), "\(name)")
        let namespace = try #require(metadata["namespace"] as? String)
        #expect(isDNSLabel(namespace))
        for (key, value) in try #require(metadata["labels"] as? [String: String]) {
            #expect(key.hasPrefix("app.kubernetes.io/") && isLabelValue(value), "\(key)=\(value)")
        }
        guard object["kind"] as? String == "Ingress" else { return }
        let spec = try #require(object["spec"] as? [String: Any])
        for rule in try #require(spec["rules"] as? [[String: Any]]) {
            let host = try #require(rule["host"] as? String)
            #expect(isIngressHost(host), "\(host)")
            for path in try #require((rule["http"] as? [String: Any])?["paths"] as? [[String: Any]]) {
                #expect(["Exact", "Prefix", "ImplementationSpecific"].contains(path["pathType"] as? String))
                #expect((path["path"] as? String)?.hasPrefix("/") == true)
            }
        }
        for entry in spec["tls"] as? [[String: Any]] ?? [] {
            let secretName = try #require(entry["secretName"] as? String)
            #expect(isDNSSubdomain(secretName))
        }
    }

    struct Rule: Equatable {
        var host: String
        var path: String
        var pathType: String
        var service: String
        var port: [String: String]
    }

    static func rules(_ ingress: [String: Any]) throws -> [Rule] {
        let spec = try #require(ingress["spec"] as? [String: Any])
        return try #require(spec["rules"] as? [[String: Any]]).map { rule in
            let paths = try #require((rule["http"] as? [String: Any])?["paths"] as? [[String: Any]])
            try #require(paths.count == 1)
            let service = try #require((paths[0]["backend"] as? [String: Any])?["service"] as? [String: Any])
            return Rule(
                host: try #require(rule["host"] as? String), path: try #require(paths[0]["path"] as? String),
                pathType: try #require(paths[0]["pathType"] as? String), service: try #require(service["name"] as? String),
                port: try #require(service["port"] as? [String: String]))
        }
    }

    static func tls(_ ingress: [String: Any]) -> [[String: [String]]] {
        ((ingress["spec"] as? [String: Any])?["tls"] as? [[String: Any]] ?? []).map {
            ["hosts": $0["hosts"] as? [String] ?? [], "secretName": [$0["secretName"] as? String ?? ""]]
        }
    }

    static func annotations(_ object: [String: Any]) -> [String: String] {
        (object["metadata"] as? [String: Any])?["annotations"] as? [String: String] ?? [:]
    }

    // MARK: Tests

    @Test func anHTTPRouteWithCustomDomainsAndSomeTLSHostsIsOneIngress() async throws {
        let route = Self.webRoute()
        let ingress = IngressManifests.ingress(route, baseDomain: Self.base, customDomains: route.customDomains, certificates: Self.certificates)
        let (valid, output) = try await Self.validate([ingress])
        #expect(valid, "\(output)")
        try Self.expectKubernetesGrammar(ingress)

        #expect(ingress["apiVersion"] as? String == "networking.k8s.io/v1" && ingress["kind"] as? String == "Ingress")
        let metadata = try #require(ingress["metadata"] as? [String: Any])
        #expect(metadata["name"] as? String == "web")
        #expect(metadata["namespace"] as? String == "slipway-env-4f2a9c")
        #expect(metadata["labels"] as? [String: String] == [
            "app.kubernetes.io/name": "web", "app.kubernetes.io/instance": "web-env_4f2a9c", "app.kubernetes.io/component": "ingress",
            "app.kubernetes.io/part-of": "prod", "app.kubernetes.io/managed-by": "slipway",
        ])
        #expect((ingress["spec"] as? [String: Any])?["ingressClassName"] as? String == "nginx")

        // One rule per host, default domain first, all to the cluster's Service `web` on its port `http`.
        let backend = (service: "web", port: ["name": "http"])
        #expect(try Self.rules(ingress) == ["web-prod.apps.example.net", "www.example.com", "example.org"].map {
            Rule(host: $0, path: "/", pathType: "Prefix", service: backend.service, port: backend.port)
        })

        // TLS where a certificate covers the host (the renewed www certificate, not the one it
        // replaces; the wildcard for the default domain); example.org stays on HTTP.
        #expect(Self.tls(ingress) == [
            ["hosts": ["www.example.com"], "secretName": [IngressManifests.tlsSecretName(Self.www)]],
            ["hosts": ["web-prod.apps.example.net"], "secretName": [IngressManifests.tlsSecretName(Self.wildcard)]],
        ])
        #expect(IngressManifests.tlsSecretName(Self.www).hasPrefix("tls-example-com-"))
        #expect(IngressManifests.tlsSecretName(Self.wildcard).hasPrefix("tls-wildcard-apps-example-net-"))
        #expect(IngressManifests.certificatesUsed(by: route, baseDomain: Self.base, customDomains: route.customDomains, among: Self.certificates).map(\.id) == [Self.www.id, Self.wildcard.id])

        #expect(Self.annotations(ingress) == [
            "nginx.ingress.kubernetes.io/ssl-redirect": "true",
            "nginx.ingress.kubernetes.io/proxy-body-size": "100m",
            "nginx.ingress.kubernetes.io/backend-protocol": "HTTP",
        ])
        // The body limit is local mode's.
        let local = NginxConfig.Settings(directory: "/tmp/n", httpListen: "127.0.0.1:80", httpsListen: "127.0.0.1:443", baseDomain: Self.base)
        #expect(IngressManifests.defaultMaxBodyMiB == local.maxBodyMiB)

        // Another ingress class, and a route no certificate covers: no tls, no redirect.
        let plain = IngressManifests.ingress(route, baseDomain: Self.base, customDomains: route.customDomains, certificates: [Self.unrelated], ingressClassName: "public")
        #expect((plain["spec"] as? [String: Any])?["ingressClassName"] as? String == "public")
        #expect((plain["spec"] as? [String: Any])?["tls"] == nil)
        #expect(Self.annotations(plain)["nginx.ingress.kubernetes.io/ssl-redirect"] == nil)
    }

    @Test func aCustomDomainReachesTheIngressOnlyOnceItsDNSCheckVerifiedIt() throws {
        let route = Self.webRoute()
        var state = NetworkState()
        state.routes[route.key] = route
        state.domainChecks["www.example.com"] = .init(state: .verified, reason: "", checkedAt: 1)
        state.domainChecks["example.org"] = .init(state: .pending, reason: "not checked yet", checkedAt: 0)
        let routed = state.routedCustomDomains(of: route)
        #expect(routed == ["www.example.com"])

        let ingress = IngressManifests.ingress(route, baseDomain: Self.base, customDomains: routed, certificates: Self.certificates)
        #expect(try Self.rules(ingress).map(\.host) == ["web-prod.apps.example.net", "www.example.com"])
        // A domain named by the caller that is not the route's own is never a host either.
        let foreign = IngressManifests.ingress(route, baseDomain: Self.base, customDomains: ["shop.example.net"], certificates: [])
        #expect(try Self.rules(foreign).map(\.host) == ["web-prod.apps.example.net"])

        // Once verified, it is routed; the operator's --network-route-unverified-domains routes all.
        state.domainChecks["example.org"] = .init(state: .verified, reason: "", checkedAt: 2)
        #expect(state.routedCustomDomains(of: route) == ["www.example.com", "example.org"])
        state.domainChecks["example.org"] = .init(state: .error, reason: "no address", checkedAt: 3)
        #expect(state.routedCustomDomains(of: route, unverified: true) == ["www.example.com", "example.org"])
        // Local mode's nginx answers the same set.
        #expect(state.routesByDomain(baseDomain: Self.base).map(\.domain) == ["web-prod.apps.example.net", "www.example.com"])
    }

    @Test func gRPCAndH2CRoutesUseTheGRPCBackendProtocolAtTheirPathPrefix() async throws {
        let grpc = IngressManifests.ingress(Self.grpcRoute(.grpc), baseDomain: Self.base, customDomains: Self.grpcRoute(.grpc).customDomains, certificates: [])
        let h2c = IngressManifests.ingress(Self.grpcRoute(.http2), baseDomain: Self.base, customDomains: Self.grpcRoute(.http2).customDomains, certificates: [Self.wildcard])
        let (valid, output) = try await Self.validate([grpc, h2c])
        #expect(valid, "\(output)")
        try Self.expectKubernetesGrammar(grpc)
        try Self.expectKubernetesGrammar(h2c)

        // Prefix matches by whole segments: /helloworld.Greeter and /helloworld.Greeter/SayHello, not
        // /helloworld.GreeterX, as local mode's `location = /p` + `location /p/`.
        let expected = [Rule(host: "greeter-prod.apps.example.net", path: "/helloworld.Greeter", pathType: "Prefix", service: "greeter", port: ["name": "http"])]
        #expect(try Self.rules(grpc) == expected)
        #expect(try Self.rules(h2c) == expected)
        #expect(Self.annotations(grpc) == ["nginx.ingress.kubernetes.io/backend-protocol": "GRPC", "nginx.ingress.kubernetes.io/proxy-body-size": "100m"])
        #expect(Self.annotations(h2c)["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPC")
        #expect(Self.annotations(h2c)["nginx.ingress.kubernetes.io/ssl-redirect"] == "true")
        #expect(Self.tls(h2c) == [["hosts": ["greeter-prod.apps.example.net"], "secretName": [IngressManifests.tlsSecretName(Self.wildcard)]]])
    }

    @Test func aCertificateIsATLSSecretThatKeepsItsNameAcrossRenewals() async throws {
        let chain = "-----BEGIN CERTIFICATE-----\nMIIBleaf\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nMIIBissuer\n-----END CERTIFICATE-----\n"
        let key = "-----BEGIN PRIVATE KEY-----\nMIGHAgEA\n-----END PRIVATE KEY-----\n"
        let secret = IngressManifests.tlsSecret(Self.www, chainPEM: chain, keyPEM: key, environmentID: "env_4f2a9c", environmentName: "prod")
        let (valid, output) = try await Self.validate([secret])
        #expect(valid, "\(output)")
        try Self.expectKubernetesGrammar(secret)

        #expect(secret["apiVersion"] as? String == "v1" && secret["kind"] as? String == "Secret" && secret["type"] as? String == "kubernetes.io/tls")
        let metadata = try #require(secret["metadata"] as? [String: Any])
        #expect(metadata["name"] as? String == IngressManifests.tlsSecretName(Self.www))
        #expect(metadata["namespace"] as? String == "slipway-env-4f2a9c")
        let labels = try #require(metadata["labels"] as? [String: String])
        #expect(labels["app.kubernetes.io/managed-by"] == "slipway" && labels["app.kubernetes.io/part-of"] == "prod")
        #expect(labels["app.kubernetes.io/component"] == "tls" && labels["app.kubernetes.io/instance"] == IngressManifests.tlsSecretName(Self.www))
        #expect(Self.annotations(secret) == ["slipway/certificate-id": Self.www.id, "slipway/domains": "example.com,www.example.com"])
        let data = try #require(secret["data"] as? [String: String])
        #expect(Set(data.keys) == ["tls.crt", "tls.key"])
        #expect(Data(base64Encoded: try #require(data["tls.crt"])) == Data(chain.utf8))
        #expect(Data(base64Encoded: try #require(data["tls.key"])) == Data(key.utf8))

        // Renewed (new chain, new id, same names, any order): the same Secret, its data replaced in
        // place; other names: another Secret. Deterministic.
        #expect(IngressManifests.tlsSecretName(Self.wwwBefore) == IngressManifests.tlsSecretName(Self.www))
        #expect(IngressManifests.tlsSecretName(Self.certificate("e", ["www.example.com"], notAfter: 0)) != IngressManifests.tlsSecretName(Self.www))
        #expect(IngressManifests.tlsSecretName(Self.unrelated) == IngressManifests.tlsSecretName(Self.unrelated))
    }

    @Test func longNamesStayWithinKubernetesLimits() async throws {
        // The default domain's first label, `<service>-<environment>`, is the longest DNS label allows.
        let service = String(repeating: "s", count: 55)
        var route = NetworkState.Route(environmentID: "ENV_" + String(repeating: "e", count: 80), serviceID: "svc_1", serviceName: service, environmentName: "staging")
        route.customDomains = [String(repeating: "d", count: 63) + "." + String(repeating: "c", count: 63) + ".example.com"]
        let long = Self.certificate("f", route.customDomains, notAfter: 1)
        let ingress = IngressManifests.ingress(route, baseDomain: "x.example.com", customDomains: route.customDomains, certificates: [long])
        let secret = IngressManifests.tlsSecret(long, chainPEM: "c", keyPEM: "k", environmentID: route.environmentID, environmentName: route.environmentName)
        let (valid, output) = try await Self.validate([ingress, secret])
        #expect(valid, "\(output)")
        try Self.expectKubernetesGrammar(ingress)
        try Self.expectKubernetesGrammar(secret)
        #expect(IngressManifests.namespace(for: route.environmentID).count == 63)
        #expect(IngressManifests.tlsSecretName(long).count == 63)
        #expect(Self.tls(ingress).first?["hosts"] == route.customDomains)
    }

    @Test func theValidatorRefusesABrokenIngress() async throws {
        func broken(_ change: (inout [String: Any]) -> Void) -> [String: Any] {
            let ingress = IngressManifests.ingress(Self.webRoute(), baseDomain: Self.base, customDomains: Self.webRoute().customDomains, certificates: Self.certificates)
            var spec = ingress["spec"] as! [String: Any]
            var rules = spec["rules"] as! [[String: Any]]
            var http = rules[0]["http"] as! [String: Any]
            var paths = http["paths"] as! [[String: Any]]
            change(&paths[0])
            http["paths"] = paths
            rules[0]["http"] = http
            spec["rules"] = rules
            var result = ingress
            result["spec"] = spec
            return result
        }
        // A field Kubernetes does not know, a missing required field, a number given as a string.
        // (An unknown enum value such as `pathType: Fuzzy` passes the schemas; expectKubernetesGrammar checks it.)
        let cases: [(String, [String: Any])] = [
            ("pathTyp", broken { $0["pathTyp"] = "Prefix" }),
            ("pathType", broken { $0["pathType"] = nil }),
            ("number", broken { $0["backend"] = ["service": ["name": "web", "port": ["number": "8080"]]] }),
        ]
        for (field, object) in cases {
            let (refused, message) = try await Self.validate([object])
            #expect(!refused && message.contains(field), "\(field): \(message)")
        }
        // And what the schemas let through, the grammar checks refuse.
        #expect(!Self.isIngressHost("Bad_Host..x") && !Self.isIngressHost("a.*.example.com") && Self.isIngressHost("*.example.com"))
        #expect(!Self.isDNSLabel("Web_X") && !Self.isDNSLabel(String(repeating: "a", count: 64)) && !Self.isLabelValue("-a"))
        #expect(!Self.isDNSSubdomain("a..b") && Self.isDNSSubdomain("tls-example-com-0123456789ab"))
    }
}
