import Crypto
import Foundation
import Logging
import NIOSSL
import ServiceLifecycle
import SwiftASN1
import SlipwayProtobuf
import SlipwayProtos
import SlipwayRPC
import SlipwayRPCServices
import Synchronization
import Testing
import X509

@testable import SlipwayServiceKit

/// A fresh `<data>/pki` for one test.
func temporaryPKI() throws -> PlatformPKI {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("slipway-pki-\(UUID().uuidString)").path
    return PlatformPKI(dataDirectory: directory)
}

func paths(_ pki: PlatformPKI, _ identity: PlatformIdentity) -> ServiceIdentity.Paths {
    .init(
        identityDirectory: pki.identityDirectory(identity), caCertificate: pki.caCertificatePath, revocationList: pki.revocationListPath,
        renewedDirectory: pki.directory + "/renewed/" + identity.name)
}

func der(_ certificate: Certificate) throws -> [UInt8] {
    var serializer = DER.Serializer()
    try serializer.serialize(certificate)
    return serializer.serializedBytes
}

@Suite struct PlatformPKITests {
    @Test func prepareIssuesEveryIdentityOnceAndAgainWhenDue() throws {
        let pki = try temporaryPKI()
        #expect(try pki.prepare().map(\.name).sorted() == PlatformIdentity.known.map(\.name).sorted())
        #expect(try pki.prepare().isEmpty)
        // Past two thirds of a 30-day life, everything is due again.
        #expect(try pki.prepare(now: Date() + 21 * 24 * 3600).count == PlatformIdentity.known.count)
        let attributes = try FileManager.default.attributesOfItem(atPath: pki.caKeyPath)
        #expect((attributes[.posixPermissions] as? NSNumber)?.intValue == 0o600)
        let keyAttributes = try FileManager.default.attributesOfItem(atPath: pki.identityDirectory(.operator) + "/tls.key")
        #expect((keyAttributes[.posixPermissions] as? NSNumber)?.intValue == 0o600)
    }

    @Test func anIdentityCertificateNamesItsHolderForServersAndClients() throws {
        let pki = try temporaryPKI()
        let certificate = try pki.issue(PlatformIdentity(.pipeline), lifetime: .seconds(3600))
        #expect(certificate.platformIdentityURIs == ["spiffe://slipway/pipeline"])
        let names = try #require(try certificate.extensions.subjectAlternativeNames)
        #expect(names.contains(.dnsName("slipway-pipeline")))
        #expect(names.contains(.dnsName("slipway-pipeline.slipway.svc")))
        let usage = try #require(try certificate.extensions.extendedKeyUsage)
        #expect(usage.contains(.clientAuth) && usage.contains(.serverAuth))
        #expect(try certificate.extensions.basicConstraints == .notCertificateAuthority)
    }

    @Test func theVerifierNamesWhyItRefuses() throws {
        let pki = try temporaryPKI()
        try pki.prepare()
        let ca = try pki.loadCA()
        let verifier = PeerVerifier(ca: ca.certificate, revocationListPath: pki.revocationListPath)
        let key = Certificate.PublicKey(P256.Signing.PrivateKey().publicKey)

        let valid = try ca.issue(PlatformIdentity(.gateway), publicKey: key, lifetime: .seconds(3600))
        #expect(verifier.verify(leafDER: try der(valid)) == .accepted(identity: "spiffe://slipway/gateway"))

        let shortLived = try ca.issue(PlatformIdentity(.gateway), publicKey: key, lifetime: .seconds(1))
        guard case .refused(let expired) = verifier.verify(leafDER: try der(shortLived), now: Date() + 10) else { Issue.record("expired accepted"); return }
        #expect(expired.contains("expired"))

        let foreign = try PlatformCA.create().issue(PlatformIdentity(.gateway), publicKey: key, lifetime: .seconds(3600))
        guard case .refused(let notOurs) = verifier.verify(leafDER: try der(foreign)) else { Issue.record("foreign accepted"); return }
        #expect(notOurs.contains("not issued by the platform CA"))

        let intruder = try ca.issue(PlatformIdentity(name: "intruder"), publicKey: key, lifetime: .seconds(3600))
        guard case .refused(let unknown) = verifier.verify(leafDER: try der(intruder)) else { Issue.record("unknown identity accepted"); return }
        #expect(unknown.contains("spiffe://slipway/intruder is not a platform identity"))

        let revoked = try ca.issue(PlatformIdentity(.gateway), publicKey: key, lifetime: .seconds(3600))
        try pki.revoke(revoked, reason: "test")
        guard case .refused(let reason) = verifier.verify(leafDER: try der(revoked)) else { Issue.record("revoked accepted"); return }
        #expect(reason.contains("revoked"))
        // Other certificates of the same identity are untouched.
        #expect(verifier.verify(leafDER: try der(valid)) == .accepted(identity: "spiffe://slipway/gateway"))

        guard case .refused(let garbage) = verifier.verify(leafDER: [0x30, 0x03, 0x01, 0x01, 0xff]) else { Issue.record("garbage accepted"); return }
        #expect(garbage.contains("cannot be parsed"))
    }

    @Test func aServiceWithoutItsIdentityDoesNotStartAndSaysHowToFixIt() throws {
        let pki = try temporaryPKI()
        #expect {
            try ServiceIdentity.load(PlatformIdentity(.logs), paths: paths(pki, PlatformIdentity(.logs)))
        } throws: { error in
            "\(error)".contains("slipway pki init")
        }
        try pki.prepare()
        // Another identity's certificate is not this one's.
        var crossed = paths(pki, PlatformIdentity(.logs))
        crossed.identityDirectory = pki.identityDirectory(PlatformIdentity(.builder))
        #expect(throws: TrustError.self) { try ServiceIdentity.load(PlatformIdentity(.logs), paths: crossed) }
        #expect(try ServiceIdentity.load(PlatformIdentity(.logs), paths: paths(pki, PlatformIdentity(.logs))).identity == PlatformIdentity(.logs))
    }
}

@Suite struct AccessTableTests {
    @Test func aCallerOutsideItsRowIsDeniedByName() {
        var policy = AccessPolicy()
        policy.allow(["spiffe://slipway/gateway"], "/p.S/Deploy")
        policy.allowAnyCaller("/grpc.health.v1.Health/Check")
        #expect(policy.decide(caller: "spiffe://slipway/gateway", path: "/p.S/Deploy") == nil)
        #expect(policy.decide(caller: "spiffe://slipway/builder", path: "/grpc.health.v1.Health/Check") == nil)
        let denied = policy.decide(caller: "spiffe://slipway/builder", path: "/p.S/Deploy")
        #expect(denied?.code == .permissionDenied)
        #expect(denied?.message.contains("spiffe://slipway/builder may not call /p.S/Deploy") == true)
        #expect(policy.decide(caller: "spiffe://slipway/gateway", path: "/p.S/Other")?.code == .permissionDenied)
        #expect(policy.decide(caller: nil, path: "/p.S/Deploy")?.code == .unauthenticated)
    }

    /// Every method of every internal service, from the compiled descriptors: one without a row
    /// fails here, so a new method cannot be forgotten.
    @Test func everyInternalMethodHasARow() {
        let files: [ServiceName: (ProtoFileDescriptor, String)] = [
            .pipeline: (Slipway_Pipeline_V1_Pipeline_proto.descriptor, "slipway.pipeline.v1.Pipeline"),
            .builder: (Slipway_Builder_V1_Builder_proto.descriptor, "slipway.builder.v1.Builder"),
            .network: (Slipway_Network_V1_Network_proto.descriptor, "slipway.network.v1.Network"),
            .cluster: (Slipway_Cluster_V1_Cluster_proto.descriptor, "slipway.cluster.v1.Cluster"),
            .certs: (Slipway_Certs_V1_Certs_proto.descriptor, "slipway.certs.v1.Certs"),
            .logs: (Slipway_Logs_V1_Logs_proto.descriptor, "slipway.logs.v1.Logs"),
        ]
        for (service, (file, serviceName)) in files {
            #expect(file.symbols.contains(serviceName))
            let methods = file.symbols.filter { $0.hasPrefix(serviceName + ".") }.map { "/\(serviceName)/\($0.dropFirst(serviceName.count + 1))" }
            #expect(!methods.isEmpty)
            let rows = Set((AccessTable.rows[service] ?? []).map(\.path)).union(AccessTable.anyPlatformIdentity)
            for method in methods { #expect(rows.contains(method), "\(method) of slipway-\(service.rawValue) has no row in AccessTable") }
            let policy = AccessTable.policy(for: service, methods: methods)
            for method in methods {
                #expect(policy.decide(caller: PlatformIdentity.operator.uri, path: method) == nil)
                #expect(policy.decide(caller: "spiffe://slipway/nobody", path: method) != nil || AccessTable.anyPlatformIdentity.contains(method))
            }
        }
    }

    @Test func onlyTheGatewayAndNetworkFetchPrivateKeys() {
        let row = AccessTable.rows[.certs]!.first { $0.path == Slipway_Certs_V1_Certs.GetKeyPair.path }!
        #expect(Set(row.callers) == [.gateway, .network])
    }

    @Test func docsAccessMarkdownIsTheTable() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let documented = try String(contentsOf: root.appendingPathComponent("docs/access.md"), encoding: .utf8)
        #expect(documented == AccessTable.markdown(), "docs/access.md is stale: .build/debug/slipway pki access > docs/access.md")
    }
}

@Suite struct MutualTLSTests {
    /// A health + reflection server with `identity`'s TLS and `service`'s access policy, on a free port.
    func withServer<R: Sendable>(
        _ pki: PlatformPKI, as service: ServiceName, _ body: @Sendable (ServiceAddress, RPCServer, ServiceIdentity) async throws -> R
    ) async throws -> R {
        let identity = try ServiceIdentity.load(PlatformIdentity(service), paths: paths(pki, PlatformIdentity(service)))
        var router = RPCRouter()
        _ = router.registerStandardServices()
        var policy = AccessTable.policy(for: service, methods: router.methodPaths)
        // A method only the pipeline may call, to see a denial.
        policy = AccessPolicy()
        policy.allow([PlatformIdentity(.pipeline).uri], Grpc_Health_V1_Health.Check.path)
        router.accessPolicy = policy
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let server = RPCServer(host: "127.0.0.1", port: 0, router: router, tls: identity.serverTLS(), logger: logger)
        return try await withThrowingTaskGroup(of: R?.self) { group in
            group.addTask {
                try await server.run()
                return nil
            }
            let address = ServiceAddress(host: "127.0.0.1", port: try await server.listeningAddress.port!)
            defer { server.shutdown() }
            let result = try await body(address, server, identity)
            server.shutdown()
            for try await value in group { if let value { return value } }
            return result
        }
    }

    @Test func callersAreNamedByTheirCertificatesAndCheckedPerMethod() async throws {
        let pki = try temporaryPKI()
        try pki.prepare()
        try await withServer(pki, as: .logs) { address, _, _ in
            let pipeline = try ServiceIdentity.load(PlatformIdentity(.pipeline), paths: paths(pki, PlatformIdentity(.pipeline)))
            let builder = try ServiceIdentity.load(PlatformIdentity(.builder), paths: paths(pki, PlatformIdentity(.builder)))
            let allowed = pipeline.client(for: .logs, at: address)
            #expect(try await allowed.unary(Grpc_Health_V1_Health.Check.self, .init()).status == .serving)
            await allowed.close()
            let other = builder.client(for: .logs, at: address)
            await #expect {
                _ = try await other.unary(Grpc_Health_V1_Health.Check.self, .init())
            } throws: { error in
                (error as? RPCError)?.code == .permissionDenied && (error as? RPCError)?.message.contains("spiffe://slipway/builder") == true
            }
            await other.close()
            // No certificate: the handshake fails.
            let anonymous = RPCClient(host: address.host, port: address.port, tls: .init(trustRoots: .file(pki.caCertificatePath), serverHostname: "slipway-logs"))
            await #expect(throws: (any Error).self) { _ = try await anonymous.unary(Grpc_Health_V1_Health.Check.self, .init()) }
            await anonymous.close()
            // The client checks the server is the service it meant: the logs' certificate is not the certs'.
            let confused = RPCClient(host: address.host, port: address.port, tls: pipeline.clientTLS(to: PlatformIdentity(.certs)))
            await #expect(throws: (any Error).self) { _ = try await confused.unary(Grpc_Health_V1_Health.Check.self, .init()) }
            await confused.close()
        }
    }

    @Test func aRenewedCertificateIsServedWithoutARestart() async throws {
        let pki = try temporaryPKI()
        try pki.prepare()
        try pki.issue(PlatformIdentity(.logs), lifetime: .seconds(3))
        let ca = try pki.loadCA()
        try await withServer(pki, as: .logs) { address, server, identity in
            let first = identity.certificate
            var logger = Logger(label: "renewal")
            logger.logLevel = .critical
            // The signer gives the renewal an hour, so only the first certificate expires during the test.
            let served = Mutex<Certificate.SerialNumber?>(nil)
            let renewal = IdentityRenewal(
                identity: identity, sign: { csr, _ in try ca.issue(identity.identity, csrDER: csr, lifetime: .seconds(3600)).serializeAsPEM().pemString + "\n" },
                renewed: {
                    try? server.reloadTLS(identity.serverTLS())
                    served.withLock { $0 = identity.certificate.serialNumber }
                }, logger: logger)
            let task = Task { try await renewal.run() }
            defer { task.cancel() }
            // Two thirds into three seconds it renews and the server reloads; wait for it (bounded).
            let deadline = ContinuousClock.now + .seconds(30)
            while served.withLock({ $0 }) == nil, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(50)) }
            #expect(served.withLock { $0 } != nil && identity.certificate.serialNumber != first.serialNumber)
            #expect(FileManager.default.fileExists(atPath: pki.directory + "/renewed/logs/tls.crt"))
            // Once the first certificate has expired, a call succeeds only if the server presents the renewed one.
            while Date() <= first.notValidAfter, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(50)) }
            #expect(Date() > first.notValidAfter)
            let pipeline = try ServiceIdentity.load(PlatformIdentity(.pipeline), paths: paths(pki, PlatformIdentity(.pipeline)))
            let client = pipeline.client(for: .logs, at: address)
            #expect(try await client.unary(Grpc_Health_V1_Health.Check.self, .init()).status == .serving)
            await client.close()
            // A restart loads the renewal, the newest of the two.
            let reloaded = try ServiceIdentity.load(PlatformIdentity(.logs), paths: paths(pki, PlatformIdentity(.logs)))
            #expect(reloaded.certificate.serialNumber == identity.certificate.serialNumber)
        }
    }
}

@Suite struct RevocationTests {
    @Test func theListTakesSerialsAndWholeIdentitiesWhateverTheLineEndings() {
        let entries = RevocationList.parse("00ab:CD  # one\r\nidentity spiffe://slipway/gateway 1700000000 # stolen\r\nnot hex here\n\n  0ff\n")
        #expect(entries.serials == ["abcd", "ff"])
        #expect(entries.issuedBefore == ["spiffe://slipway/gateway": Date(timeIntervalSince1970: 1_700_000_000)])
    }

    @Test func revokingAnIdentityRefusesItsCertificatesUntilThenAndNotLaterOnes() throws {
        let pki = try temporaryPKI()
        try pki.prepare()
        let ca = try pki.loadCA()
        let verifier = PeerVerifier(ca: ca.certificate, revocationListPath: pki.revocationListPath)
        let key = Certificate.PublicKey(P256.Signing.PrivateKey().publicKey)
        let now = Date()
        let stolen = try ca.issue(PlatformIdentity(.gateway), publicKey: key, lifetime: .seconds(3600), now: now - 10)
        let other = try ca.issue(PlatformIdentity(.pipeline), publicKey: key, lifetime: .seconds(3600), now: now - 10)
        try pki.revokeAll(of: PlatformIdentity(.gateway), reason: "key stolen", now: now)
        guard case .refused(let reason) = verifier.verify(leafDER: try der(stolen)) else { Issue.record("a revoked identity was accepted"); return }
        #expect(reason.contains("revocation"))
        #expect(verifier.verify(leafDER: try der(other)) == .accepted(identity: "spiffe://slipway/pipeline"))
        let reissued = try ca.issue(PlatformIdentity(.gateway), publicKey: key, lifetime: .seconds(3600), now: now + 3)
        #expect(verifier.verify(leafDER: try der(reissued), now: now + 4) == .accepted(identity: "spiffe://slipway/gateway"))
        // `prepare` (slipway pki init) reissues the revoked identity.
        #expect(try pki.prepare(now: now + 2).contains(PlatformIdentity(.gateway)))
    }

    @Test func aCAKeyWithoutItsCertificateIsNeverReplacedSilently() throws {
        let pki = try temporaryPKI()
        try pki.prepare()
        try FileManager.default.removeItem(atPath: pki.caCertificatePath)
        #expect { try pki.prepare() } throws: { "\($0)".contains("exists without") }
    }
}
