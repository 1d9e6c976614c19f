import Crypto
import Foundation
import Logging
import SlipwayHTTP
import SlipwayTestSupport
import Synchronization
import Testing

@testable import SlipwayACME

/// Retry behaviour pebble cannot provoke (it sends no 5xx and no rate limits), against a scripted server.
@Suite struct ACMEClientRetryTests {
    /// Answers the n-th request to a path with the n-th scripted reply (the last one repeats).
    final class Script: Sendable {
        private let replies: Mutex<[String: [TinyHTTPServer.Reply]]>

        init(_ replies: [String: [TinyHTTPServer.Reply]]) { self.replies = Mutex(replies) }

        func reply(to request: TinyHTTPServer.Request) -> TinyHTTPServer.Reply {
            let base = "http://\(request.headers["host"] ?? "")"
            let reply: TinyHTTPServer.Reply? = replies.withLock { replies in
                guard var queue = replies["\(request.method) \(request.path)"], !queue.isEmpty else { return nil }
                let next = queue.count > 1 ? queue.removeFirst() : queue[0]
                replies["\(request.method) \(request.path)"] = queue
                return next
            }
            guard var reply else { return .text(404, "no script for \(request.method) \(request.path)") }
            // Scripts write URLs as BASE/...; the port is only known once the server runs.
            reply.body = Array(String(decoding: reply.body, as: UTF8.self).replacingOccurrences(of: "BASE", with: base).utf8)
            reply.headers = reply.headers.map { ($0.0, $0.1.replacingOccurrences(of: "BASE", with: base)) }
            return reply
        }
    }

    static let directory = TinyHTTPServer.Reply.text(
        200, #"{"newNonce":"BASE/nonce","newAccount":"BASE/new-account","newOrder":"BASE/new-order"}"#,
        headers: [("Content-Type", "application/json")]
    )

    static func problem(_ status: Int, _ type: String, _ detail: String, headers: [(String, String)] = []) -> TinyHTTPServer.Reply {
        .text(status, #"{"type":"urn:ietf:params:acme:error:\#(type)","detail":"\#(detail)","status":\#(status)}"#,
              headers: [("Content-Type", "application/problem+json")] + headers)
    }

    static func withServer(_ script: Script, _ body: (URL, TinyHTTPServer) async throws -> Void) async throws {
        let server = try await TinyHTTPServer.start { script.reply(to: $0) }
        do {
            try await body(URL(string: "http://127.0.0.1:\(server.port)/dir")!, server)
            await server.stop()
        } catch {
            await server.stop()
            throw error
        }
    }

    /// A client retrying 3 times from a 10 ms backoff.
    static func client(_ directoryURL: URL, key: P256.Signing.PrivateKey = P256.Signing.PrivateKey(), logger: Logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })) -> ACMEClient {
        var configuration = ACMEClient.Configuration()
        configuration.initialBackoff = .milliseconds(10)
        configuration.maxAttempts = 3
        configuration.requestDeadline = .seconds(60)
        return ACMEClient(directoryURL: directoryURL, accountKey: key, accountURL: nil, httpClient: HTTPClient(timeout: .seconds(5)), logger: logger, configuration: configuration)
    }

    @Test func retries503AfterRetryAfterAndBadNonceWithTheNonceFromTheError() async throws {
        let script = Script([
            "GET /dir": [Self.problem(503, "serverInternal", "maintenance", headers: [("Retry-After", "1")]), Self.directory],
            "HEAD /nonce": [.text(200, "", headers: [("Replay-Nonce", "nonce-1")])],
            "POST /new-account": [
                Self.problem(400, "badNonce", "JWS has an invalid anti-replay nonce", headers: [("Replay-Nonce", "nonce-2")]),
                .text(201, #"{"status":"valid"}"#, headers: [("Location", "BASE/acct/1"), ("Replay-Nonce", "nonce-3")]),
            ],
        ])
        try await Self.withServer(script) { directoryURL, server in
            let key = P256.Signing.PrivateKey()
            let client = Self.client(directoryURL, key: key)
            let started = ContinuousClock.now
            let account = try await client.register(contact: [], termsOfServiceAgreed: true)
            let elapsed = ContinuousClock.now - started

            #expect(account.absoluteString == "http://127.0.0.1:\(server.port)/acct/1")
            #expect(elapsed >= .seconds(1), "the client must wait the Retry-After second, not its 10 ms backoff")
            #expect(server.requests.map { "\($0.method) \($0.path)" } == ["GET /dir", "GET /dir", "HEAD /nonce", "POST /new-account", "POST /new-account"])
            let posts = try server.requests.filter { $0.method == "POST" }.map { try JSONDecoder().decode(JWS.self, from: Data($0.body)) }
            #expect(try posts.map { try $0.header().nonce } == ["nonce-1", "nonce-2"])
            #expect(posts.allSatisfy { $0.isValidSignature(for: key.publicKey) })
            #expect(server.requests.filter { $0.method == "POST" }.allSatisfy { $0.headers["content-type"] == "application/jose+json" })
        }
    }

    @Test func givesUpAfterMaxAttempts() async throws {
        let script = Script(["GET /dir": [Self.problem(503, "serverInternal", "down")]])
        try await Self.withServer(script) { directoryURL, server in
            let client = Self.client(directoryURL)
            let error = try await #require(throws: ACMEError.self) { try await client.register(contact: [], termsOfServiceAgreed: true) }
            #expect(error.code == .server)
            #expect(error.problem?.shortType == "serverInternal")
            #expect(error.message.contains("503") && error.message.contains("gave up after 3 attempts"), "\(error.message)")
            #expect(server.requests.count == 3)
        }
    }

    @Test func rateLimitPastTheDeadlineFailsAtOnceSayingWhenToRetry() async throws {
        let script = Script(["GET /dir": [Self.problem(429, "rateLimited", "too many new orders", headers: [("Retry-After", "3600")])]])
        try await Self.withServer(script) { directoryURL, server in
            let client = Self.client(directoryURL)
            let error = try await #require(throws: ACMEError.self) { try await client.register(contact: [], termsOfServiceAgreed: true) }
            #expect(error.problem?.shortType == "rateLimited")
            #expect(error.message.contains("too many new orders") && error.message.contains("retry after 3600 s"), "\(error.message)")
            #expect(server.requests.count == 1)
        }
    }

    @Test func clientErrorsAreNotRetried() async throws {
        let script = Script([
            "GET /dir": [Self.directory],
            "HEAD /nonce": [.text(200, "", headers: [("Replay-Nonce", "n")])],
            "POST /new-account": [Self.problem(400, "malformed", "contact is not a mailto URL")],
        ])
        try await Self.withServer(script) { directoryURL, server in
            let client = Self.client(directoryURL)
            let error = try await #require(throws: ACMEError.self) { try await client.register(contact: ["http://x"], termsOfServiceAgreed: true) }
            #expect(error.problem?.shortType == "malformed")
            #expect(error.message == "POST http://127.0.0.1:\(server.port)/new-account failed: 400 malformed: contact is not a mailto URL")
            #expect(server.requests.filter { $0.method == "POST" }.count == 1)
        }
    }

    @Test func connectionFailuresOfUnsignedRequestsAreRetried() async throws {
        // Port 1 on loopback: nothing listens, every connection is refused.
        let recorder = LogRecorder()
        let client = Self.client(URL(string: "http://127.0.0.1:1/dir")!, logger: recorder.logger())
        let error = try await #require(throws: ACMEError.self) { try await client.register(contact: [], termsOfServiceAgreed: true) }
        #expect(error.code == .transport)
        #expect(error.message.hasPrefix("GET http://127.0.0.1:1/dir failed: "), "\(error.message)")
        #expect(recorder.messages.filter { $0.contains("retrying") }.count == 2)
    }
}
