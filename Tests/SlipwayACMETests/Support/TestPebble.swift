import Crypto
import Foundation
import Logging
import NIOSSL
import SlipwayACME
import SlipwayHTTP
import SlipwayTestSupport
import SwiftASN1
import X509

#if canImport(Glibc)
import Glibc
#endif

/// A real pebble (Let's Encrypt's test CA) with pebble-challtestsrv as its DNS server, on free loopback ports,
/// validating HTTP-01 against a `TinyHTTPServer` that serves whatever the test's responder presents.
///
/// challtestsrv answers every A query with 127.0.0.1, so pebble fetches
/// `http://<any name>:<challenge port>/.well-known/acme-challenge/<token>` from the challenge server.
struct TestPebble: Sendable {
    /// The ACME directory.
    let directoryURL: URL
    /// pebble's management interface (roots, intermediates, certificate status).
    let managementURL: URL
    /// pebble-challtestsrv's management interface (DNS records).
    let challtestsrvURL: URL
    /// An HTTP client trusting pebble's listener certificate.
    let httpClient: HTTPClient
    /// What the challenge server serves, token → body.
    let challenges: ChallengeStore
    let challengeServer: TinyHTTPServer

    /// Runs `body` with a fresh pebble; everything started is killed and removed when it returns.
    ///
    /// The environment defaults make validation real and fast (`PEBBLE_VA_NOSLEEP=1`,
    /// `PEBBLE_VA_ALWAYS_VALID=0`), every order validated afresh (`PEBBLE_AUTHZREUSE=0`), and no random
    /// nonce rejection (`PEBBLE_WFE_NONCEREJECT=0`); `environment` overrides them.
    static func run<T>(environment: [String: String] = [:], _ body: (TestPebble) async throws -> T) async throws -> T {
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("slipway-pebble-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scratch) }

        let listenerCertificate = try writeListenerCertificate(into: scratch)
        let httpClient = HTTPClient(timeout: .seconds(10), trustRoots: [try NIOSSLCertificate(bytes: listenerCertificate, format: .der)])
        let challenges = ChallengeStore()
        let challengeServer = try await TinyHTTPServer.start { request in
            let prefix = "/.well-known/acme-challenge/"
            guard request.method == "GET", request.path.hasPrefix(prefix), let body = challenges.body(for: String(request.path.dropFirst(prefix.count))) else {
                return .text(404, "not found")
            }
            return .text(200, body, headers: [("Content-Type", "text/plain")])
        }

        var pebbleEnvironment = ProcessInfo.processInfo.environment
        pebbleEnvironment.merge(
            ["PEBBLE_VA_NOSLEEP": "1", "PEBBLE_VA_ALWAYS_VALID": "0", "PEBBLE_AUTHZREUSE": "0", "PEBBLE_WFE_NONCEREJECT": "0"],
            uniquingKeysWith: { $1 }
        )
        pebbleEnvironment.merge(environment, uniquingKeysWith: { $1 })

        // A port picked free can be taken before pebble binds it: start again on other ports (at most 3 times).
        var processes: [Process] = []
        var pebble: TestPebble?
        var failures: [String] = []
        for _ in 0..<3 where pebble == nil {
            let ports = try freePorts(4)
            let (acme, management, dns, challtestsrvManagement) = (ports[0], ports[1], ports[2], ports[3])
            let config = """
            {"pebble": {"listenAddress": "127.0.0.1:\(acme)", "managementListenAddress": "127.0.0.1:\(management)",
              "certificate": "\(scratch)/cert.pem", "privateKey": "\(scratch)/key.pem",
              "httpPort": \(challengeServer.port), "tlsPort": 1, "ocspResponderURL": "", "externalAccountBindingRequired": false}}
            """
            try Data(config.utf8).write(to: URL(fileURLWithPath: "\(scratch)/pebble-\(acme).json"))
            let challtestsrv = try spawn(
                "/usr/bin/pebble-challtestsrv",
                ["-http01", "", "-https01", "", "-tlsalpn01", "", "-dns01", "127.0.0.1:\(dns)",
                 "-management", "127.0.0.1:\(challtestsrvManagement)", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""],
                log: "\(scratch)/challtestsrv-\(dns).log"
            )
            processes.append(challtestsrv)
            let pebbleProcess = try spawn(
                "/usr/bin/pebble",
                ["-config", "\(scratch)/pebble-\(acme).json", "-dnsserver", "127.0.0.1:\(dns)", "-strict=false"],
                log: "\(scratch)/pebble-\(acme).log",
                environment: pebbleEnvironment
            )
            processes.append(pebbleProcess)
            let candidate = TestPebble(
                directoryURL: URL(string: "https://127.0.0.1:\(acme)/dir")!,
                managementURL: URL(string: "https://127.0.0.1:\(management)")!,
                challtestsrvURL: URL(string: "http://127.0.0.1:\(challtestsrvManagement)")!,
                httpClient: httpClient,
                challenges: challenges,
                challengeServer: challengeServer
            )
            if let failure = await candidate.waitUntilReady(processes: [challtestsrv, pebbleProcess]) {
                let logs = ["pebble-\(acme).log", "challtestsrv-\(dns).log"].map { name in
                    "\(name):\n" + ((try? String(contentsOfFile: "\(scratch)/\(name)", encoding: .utf8)) ?? "").suffix(1500)
                }
                failures.append(failure + "\n" + logs.joined(separator: "\n"))
                stop(processes)
                processes = []
            } else {
                pebble = candidate
            }
        }
        defer { stop(processes) }
        guard let pebble else {
            await challengeServer.stop()
            throw TestFailure("pebble did not start:\n" + failures.joined(separator: "\n---\n"))
        }
        do {
            let result = try await body(pebble)
            await challengeServer.stop()
            return result
        } catch {
            await challengeServer.stop()
            throw error
        }
    }

    /// A client for this pebble, polling every 50 ms (pebble validates at once with PEBBLE_VA_NOSLEEP).
    func client(_ accountKey: P256.Signing.PrivateKey, accountURL: URL? = nil, logger: Logger = Logger(label: "acme-test", factory: { _ in SwiftLogNoOpLogHandler() })) -> ACMEClient {
        var configuration = ACMEClient.Configuration()
        configuration.pollInterval = .milliseconds(50)
        configuration.pollTimeout = .seconds(20)
        configuration.requestDeadline = .seconds(20)
        return ACMEClient(directoryURL: directoryURL, accountKey: accountKey, accountURL: accountURL, httpClient: httpClient, logger: logger, configuration: configuration)
    }

    // MARK: Management interface

    /// pebble's root CA certificate (regenerated on every start).
    func root() async throws -> Certificate {
        try Certificate(pemEncoded: try await managementText("/roots/0"))
    }

    /// pebble's intermediate CA certificate, which signs the leaves.
    func intermediate() async throws -> Certificate {
        try Certificate(pemEncoded: try await managementText("/intermediates/0"))
    }

    /// "Valid" or "Revoked" for the certificate with this serial number.
    func certificateStatus(serial: Certificate.SerialNumber) async throws -> String {
        // pebble prints serials as Go's %x of a big.Int: lowercase hex, no leading zeros.
        var hex = serial.bytes.map { String(format: "%02x", $0) }.joined()
        while hex.hasPrefix("0"), hex.count > 1 { hex.removeFirst() }
        let text = try await managementText("/cert-status-by-serial/\(hex)")
        struct Status: Decodable { var Status: String }
        return try JSONDecoder().decode(Status.self, from: Data(text.utf8)).Status
    }

    /// Makes challtestsrv answer A queries for `host` with `address` (instead of 127.0.0.1).
    func setAddress(_ address: String, for host: String) async throws {
        let body = Array(#"{"host":"\#(host)","addresses":["\#(address)"]}"#.utf8)
        let response = try await HTTPClient(timeout: .seconds(5)).send(.POST, challtestsrvURL.appendingPathComponent("/add-a"), body: body)
        guard response.status == 200 else { throw TestFailure("challtestsrv /add-a answered \(response.status)") }
    }

    private func managementText(_ path: String) async throws -> String {
        let response = try await httpClient.send(.GET, managementURL.appendingPathComponent(path))
        guard response.status == 200 else { throw TestFailure("pebble management \(path) answered \(response.status)") }
        return String(decoding: response.body, as: UTF8.self)
    }

    // MARK: Start-up

    /// Nil once the directory and the management interface answer and challtestsrv's management port is up;
    /// otherwise why not (a process exited, or 15 s passed).
    private func waitUntilReady(processes: [Process]) async -> String? {
        let plain = HTTPClient(timeout: .seconds(1))
        let deadline = ContinuousClock.now + .seconds(15)
        var lastError = ""
        while ContinuousClock.now < deadline {
            if let exited = processes.first(where: { !$0.isRunning }) {
                return "\(exited.executableURL?.lastPathComponent ?? "?") exited with status \(exited.terminationStatus)"
            }
            do {
                // challtestsrv answers its management root with 404: any answer means it is up.
                _ = try await plain.send(.GET, challtestsrvURL.appendingPathComponent("/"))
                let directory = try await httpClient.send(.GET, directoryURL)
                let roots = try await httpClient.send(.GET, managementURL.appendingPathComponent("/roots/0"))
                if directory.status == 200, roots.status == 200 { return nil }
                lastError = "directory \(directory.status), roots \(roots.status)"
            } catch {
                lastError = "\(error)"
            }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return "not ready within 15 s: \(lastError)"
    }

    /// A throwaway self-signed P-256 certificate for pebble's HTTPS listeners (127.0.0.1 and localhost);
    /// writes cert.pem and key.pem and returns the certificate's DER.
    private static func writeListenerCertificate(into directory: String) throws -> [UInt8] {
        let key = P256.Signing.PrivateKey()
        let name = try DistinguishedName { CommonName("slipway test pebble listener") }
        let now = Date()
        let certificate = try Certificate(
            version: .v3,
            serialNumber: Certificate.SerialNumber(),
            publicKey: Certificate.PublicKey(key.publicKey),
            notValidBefore: now.addingTimeInterval(-3600),
            notValidAfter: now.addingTimeInterval(86400),
            issuer: name,
            subject: name,
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: nil))
                SubjectAlternativeNames([.dnsName("localhost"), .ipAddress(ASN1OctetString(contentBytes: [127, 0, 0, 1]))])
            },
            issuerPrivateKey: Certificate.PrivateKey(key)
        )
        try Data(try certificate.serializeAsPEM().pemString.utf8).write(to: URL(fileURLWithPath: directory + "/cert.pem"))
        try Data(key.pemRepresentation.utf8).write(to: URL(fileURLWithPath: directory + "/key.pem"))
        var serializer = DER.Serializer()
        try serializer.serialize(certificate)
        return serializer.serializedBytes
    }

    private static func spawn(_ executable: String, _ arguments: [String], log: String, environment: [String: String]? = nil) throws -> Process {
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        let output = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        if let environment { process.environment = environment }
        process.standardOutput = output
        process.standardError = output
        process.standardInput = FileHandle.nullDevice
        try process.run()
        try? output.close()
        return process
    }

    private static func stop(_ processes: [Process]) {
        for process in processes where process.isRunning {
            kill(process.processIdentifier, SIGKILL)
        }
        for process in processes { process.waitUntilExit() }
    }

    /// `count` distinct TCP ports in 20000..<32000 that bind now; UDP too, since one is challtestsrv's DNS port.
    private static func freePorts(_ count: Int) throws -> [Int] {
        var ports: [Int] = []
        var tries = 0
        while ports.count < count {
            tries += 1
            guard tries < 200 else { throw TestFailure("no free ports in 20000..<32000") }
            let port = Int.random(in: 20000..<32000)
            if !ports.contains(port), binds(port, type: SOCK_STREAM), binds(port, type: SOCK_DGRAM) { ports.append(port) }
        }
        return ports
    }

    private static func binds(_ port: Int, type: __socket_type) -> Bool {
        let fd = socket(AF_INET, Int32(type.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
    }
}
