import Foundation
import NIOSSL
import SlipwayProtos
import Testing

@testable import SlipwayRPC

/// Certificates made by the real openssl CLI: a CA, a server certificate for 127.0.0.1/localhost,
/// and a client certificate for mutual TLS.
struct TestPKI {
    let directory: String

    init() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("slipway-pki-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try run("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=slipway-test-ca")
        for (name, extra) in [("server", "subjectAltName=DNS:localhost,IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")] {
            try run("openssl req -newkey rsa:2048 -nodes -keyout \(name).key -out \(name).csr -subj /CN=\(name)")
            try run("printf '\(extra)\\n' > \(name).ext && openssl x509 -req -in \(name).csr -CA ca.pem -CAkey ca.key -CAcreateserial -out \(name).pem -days 2 -extfile \(name).ext")
        }
    }

    func path(_ file: String) -> String { "\(directory)/\(file)" }

    private func run(_ command: String) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", "cd \(directory) && \(command) 2>/dev/null"]
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw RPCError(.internal, "openssl failed: \(command)") }
    }
}

@Suite struct TLSTests {
    @Test func tlsWithALPNh2() async throws {
        let pki = try TestPKI()
        let serverTLS = try RPCServer.TLS(certificatePath: pki.path("server.pem"), keyPath: pki.path("server.key"))
        let clientTLS = RPCClient.TLS(trustRoots: .file(pki.path("ca.pem")))
        try await withServer(tls: serverTLS, clientTLS: clientTLS) { client, _ in
            let response = try await client.unary(TestService.Unary.self, testRequest("over tls"))
            #expect(response.text == "over tls")
        }
    }

    @Test func mutualTLSRequiresAClientCertificate() async throws {
        let pki = try TestPKI()
        let serverTLS = try RPCServer.TLS(certificatePath: pki.path("server.pem"), keyPath: pki.path("server.key"), clientCAPath: pki.path("ca.pem"))
        let anonymous = RPCClient.TLS(trustRoots: .file(pki.path("ca.pem")))
        try await withServer(tls: serverTLS, clientTLS: anonymous) { client, _ in
            await #expect { _ = try await client.unary(TestService.Unary.self, testRequest()) } throws: { ($0 as? RPCError)?.code == .unavailable }
        }
        let identified = RPCClient.TLS(
            trustRoots: .file(pki.path("ca.pem")), certificateChain: try NIOSSLCertificate.fromPEMFile(pki.path("client.pem")),
            privateKey: try NIOSSLPrivateKey(file: pki.path("client.key"), format: .pem))
        try await withServer(tls: serverTLS, clientTLS: identified) { client, _ in
            let text = try await client.unary(TestService.Unary.self, testRequest("mtls")).text
            #expect(text == "mtls")
        }
    }
}
