import Foundation
import Testing

@testable import SlipwayNetwork

struct RouteValidationTests {
    @Test func domainsLabelsPrefixesAndBackendsFollowTheirGrammar() throws {
        for good in ["app.example.com", "a-b.c0.example.test", "x.localhost"] { try RouteValidation.domain(good, field: "d") }
        for bad in ["example", "App.example.com", "-a.example.com", "a-.example.com", "a..example.com", "a b.example.com", "a;.example.com",
                    String(repeating: "a", count: 64) + ".example.com", "*.example.com"] {
            #expect(throws: RouteValidation.Invalid.self, "\(bad)") { try RouteValidation.domain(bad, field: "d") }
        }
        try RouteValidation.domain("*.example.com", field: "d", wildcard: true)

        #expect(try RouteValidation.pathPrefix("") == "/")
        #expect(try RouteValidation.pathPrefix("/") == "/")
        #expect(try RouteValidation.pathPrefix("/api/") == "/api")
        #expect(try RouteValidation.pathPrefix("/api/v1.2_~x") == "/api/v1.2_~x")
        for bad in ["api", "/a b", "/a;", "/a{", "//a", "/a\"", "/a$x"] {
            #expect(throws: RouteValidation.Invalid.self, "\(bad)") { _ = try RouteValidation.pathPrefix(bad) }
        }

        for good in ["127.0.0.1:80", "[::1]:8080", "web.svc:65535"] { try RouteValidation.backend(good) }
        for bad in ["127.0.0.1", "127.0.0.1:0", "h:65536", "h;:80", "[::g]:80", ":80", "h :80"] {
            #expect(throws: RouteValidation.Invalid.self, "\(bad)") { try RouteValidation.backend(bad) }
        }
    }

    @Test func aWildcardCertificateCoversOneLabelAndTheLatestExpiryWins() {
        var state = NetworkState()
        state.certificates = [
            .init(id: "wild", domains: ["*.example.com"], notAfter: 100, installedAt: 0),
            .init(id: "exact-old", domains: ["a.example.com"], notAfter: 50, installedAt: 0),
            .init(id: "exact-new", domains: ["a.example.com"], notAfter: 200, installedAt: 0),
        ]
        #expect(state.certificate(for: "a.example.com")?.id == "exact-new")
        #expect(state.certificate(for: "b.example.com")?.id == "wild")
        #expect(state.certificate(for: "x.b.example.com") == nil)
        #expect(state.certificate(for: "example.com") == nil)
    }
}

struct DNSClientTests {
    /// An answer as a resolver sends it: the question, then a CNAME whose name is a compression
    /// pointer to the question, then an A record for the target.
    @Test func answersWithCompressedNamesAreRead() throws {
        let query = DNSClient.encodeQuery(id: 0x1234, name: "www.example.test", type: .a)
        #expect(Array(query[0..<12]) == [0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0])
        var answer = query
        answer[2] = 0x81; answer[3] = 0x80  // response, recursion available, NOERROR
        answer[7] = 2  // two answers
        // CNAME: name = pointer to offset 12, type 5, class 1, ttl, rdlength, rdata = "web" + pointer to "example.test".
        let target: [UInt8] = [3] + Array("web".utf8) + [0xc0, 16]
        answer += [0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, UInt8(target.count)] + target
        // A: name = pointer to the CNAME target (offset of its rdata), 203.0.113.7.
        let targetOffset = query.count + 12
        answer += [0xc0, UInt8(targetOffset), 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 203, 0, 113, 7]
        let decoded = try DNSClient.decodeAnswer(answer, id: 0x1234)
        #expect(decoded == DNSClient.Answer(responseCode: 0, cnames: ["web.example.test"], addresses: ["203.0.113.7"]))
        #expect(throws: DNSClient.Failure.self) { try DNSClient.decodeAnswer(answer, id: 0x4321) }
        #expect(throws: DNSClient.Failure.self) { try DNSClient.decodeAnswer(Array(answer.prefix(answer.count - 3)), id: 0x1234) }
        // A pointer loop is refused, not followed forever.
        var loop = Array(answer.prefix(12)) + [0xc0, 12]
        loop[4] = 0; loop[5] = 1; loop[7] = 0
        #expect(throws: DNSClient.Failure.self) { try DNSClient.decodeAnswer(loop, id: 0x1234) }
    }

    @Test func txtRecordsJoinTheirStringsAndAStringPastItsRecordIsRefused() throws {
        var answer = DNSClient.encodeQuery(id: 0x0707, name: "_slipway-challenge.shop.example.test", type: .txt)
        answer[2] = 0x81; answer[3] = 0x80
        answer[7] = 2
        // One record of two character-strings, one of one.
        let first: [UInt8] = [14] + Array("slipway-verify".utf8) + [4] + Array("=abc".utf8)
        answer += [0xc0, 12, 0, 16, 0, 1, 0, 0, 0, 60, 0, UInt8(first.count)] + first
        let second: [UInt8] = [5] + Array("other".utf8)
        answer += [0xc0, 12, 0, 16, 0, 1, 0, 0, 0, 60, 0, UInt8(second.count)] + second
        #expect(try DNSClient.decodeAnswer(answer, id: 0x0707).texts == ["slipway-verify=abc", "other"])
        // A character-string that claims more than its record holds.
        var broken = answer
        broken[broken.count - second.count] = 40
        #expect(throws: DNSClient.Failure.self) { try DNSClient.decodeAnswer(broken, id: 0x0707) }
    }

    @Test func aVerdictCountsOnlyForTheClaimItWasMadeFor() {
        var route = NetworkState.Route(environmentID: "env", serviceID: "svc", serviceName: "web", environmentName: "prod")
        route.customDomains = ["shop.example.test", "old.example.test"]
        route.ownershipTokens = ["shop.example.test": "slipway-verify=one"]
        var state = NetworkState()
        state.routes[route.key] = route
        state.domainChecks["shop.example.test"] = .init(state: .verified, reason: "", checkedAt: 1, token: "slipway-verify=one")
        state.domainChecks["old.example.test"] = .init(state: .verified, reason: "", checkedAt: 1)
        #expect(state.routedCustomDomains(of: route) == ["shop.example.test", "old.example.test"])
        // Claimed again under another token (another organization): not verified until checked again.
        route.ownershipTokens = ["shop.example.test": "slipway-verify=two", "old.example.test": "slipway-verify=three"]
        #expect(state.routedCustomDomains(of: route).isEmpty)
        #expect(state.check(of: "shop.example.test", in: route) == nil)
        // A grace holds until its end.
        let grace = NetworkState.DomainCheck(state: .verified, reason: "", checkedAt: 1, token: "slipway-verify=three", graceUntil: 100)
        #expect(grace.holds(at: 99) && !grace.holds(at: 100))
        state.domainChecks["old.example.test"] = grace
        #expect(state.isInGrace("old.example.test", in: route) && !state.isVerified("old.example.test", in: route))
    }
}

/// The rendered configuration, checked by the real nginx (`nginx -t`).
struct NginxConfigTests {
    @Test func everyKindOfRouteRendersAConfigurationNginxAccepts() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("slipway-nginx-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let nginx = Nginx(directory: directory)
        try nginx.prepareDirectories()
        let config = NginxConfig(settings: .init(directory: directory, httpListen: "127.0.0.1:18080", httpsListen: "127.0.0.1:18443", baseDomain: "localhost"))

        var state = NetworkState()
        var web = NetworkState.Route(environmentID: "e", serviceID: "web", serviceName: "web", environmentName: "dev")
        web.customDomains = ["shop.example.test"]
        var api = NetworkState.Route(environmentID: "e", serviceID: "api", serviceName: "api", environmentName: "dev")
        api.customDomains = ["shop.example.test"]
        api.pathPrefix = "/api"
        api.upstream = .grpc
        var idle = NetworkState.Route(environmentID: "e", serviceID: "idle", serviceName: "idle", environmentName: "Dev & QA")
        // The pipeline's label, unique across the platform, names the default domain.
        idle.defaultLabel = "idle-dev-qa-x7k2"
        #expect(idle.defaultDomain(base: "localhost") == "idle-dev-qa-x7k2.localhost")
        #expect(web.defaultDomain(base: "localhost") == "web-dev.localhost")
        state.routes = [web.key: web, api.key: api, idle.key: idle]
        state.backends = [web.key: ["127.0.0.1:9001", "127.0.0.1:9002"], api.key: ["[::1]:9003"]]
        state.challenges = ["tok": "tok.thumb"]
        // A custom domain is routed once its DNS check verified it; a pending one is nobody's yet.
        web.customDomains.append("pending.example.test")
        state.routes[web.key] = web
        state.domainChecks = [
            "shop.example.test": .init(state: .verified, reason: "A 127.0.0.1", checkedAt: 1),
            "pending.example.test": .init(state: .pending, reason: "no record", checkedAt: 1),
        ]
        #expect(!config.render(state).contains("pending.example.test"))
        var open = config
        open.settings.routeUnverifiedDomains = true
        #expect(open.render(state).contains("server_name pending.example.test;"))

        let text = config.render(state)
        #expect(text.contains("server_name shop.example.test;"))
        #expect(text.contains("server_name idle-dev-qa-x7k2.localhost;"))
        #expect(text.contains("location /api/ { grpc_pass grpc://"))
        #expect(text.contains("return 503 \"no ready instance of idle yet\\n\";"))
        #expect(text.contains("location = /.well-known/acme-challenge/tok { default_type text/plain; return 200 \"tok.thumb\"; }"))
        // Longer prefixes first within a server, so the reader sees the precedence nginx applies.
        let shop = try #require(text.range(of: "server_name shop.example.test;"))
        #expect(text[shop.upperBound...].range(of: "/api")!.lowerBound < text[shop.upperBound...].range(of: "location / {")!.lowerBound)
        let path = directory + "/candidate.conf"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        try await nginx.test(configuration: path)

        // nginx's own complaint comes back when it refuses a configuration.
        try (text + "bogus_directive on;\n").write(toFile: path, atomically: true, encoding: .utf8)
        await #expect { try await nginx.test(configuration: path) } throws: { "\($0)".contains("bogus_directive") }
    }
}
