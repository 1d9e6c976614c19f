/// Serves HTTP-01 challenge responses (RFC 8555 §8.3) while the CA validates them.
///
/// The CA fetches `http://<domain>/.well-known/acme-challenge/<token>` on port 80 and expects exactly
/// `keyAuthorization` as the body (`text/plain` or `application/octet-stream`). Tokens are base64url
/// (the client checks), so they are safe as file names and path segments.
///
/// ```swift
/// struct DirectoryResponder: ACMEChallengeResponder {
///     var directory: URL  // served by the load balancer at /.well-known/acme-challenge/
///     func present(token: String, keyAuthorization: String) async throws {
///         try Data(keyAuthorization.utf8).write(to: directory.appendingPathComponent(token))
///     }
///     func cleanUp(token: String) async throws {
///         try FileManager.default.removeItem(at: directory.appendingPathComponent(token))
///     }
/// }
/// ```
public protocol ACMEChallengeResponder: Sendable {
    /// Starts serving `keyAuthorization` for `token`; returns once the CA can fetch it.
    func present(token: String, keyAuthorization: String) async throws
    /// Stops serving `token`. Called after validation whether it succeeded or not.
    func cleanUp(token: String) async throws
}
