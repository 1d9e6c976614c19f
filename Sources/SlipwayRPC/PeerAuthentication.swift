import Logging
import NIOCore
import NIOSSL
import NIOTLS

/// What a server's check of a client certificate decided.
public enum PeerVerdict: Sendable, Equatable {
    /// Accepted: the identity the certificate names, for ``ServerContext/caller`` and the access policy.
    case accepted(identity: String)
    /// Refused, and why: the handshake fails and the reason is logged with the peer's address.
    case refused(reason: String)
}

/// Checks a client's leaf certificate (DER) and names its holder. Runs on the event loop during the
/// handshake: it must not block.
public typealias ClientCertificateVerifier = @Sendable (_ leafDER: [UInt8]) -> PeerVerdict

/// One connection's authenticated peer, filled in during the TLS handshake (event loop only).
final class PeerAuthentication {
    private(set) var identity: String?
    private(set) var refusal: String?
    /// The client's leaf certificate (DER), for handlers that need more than the identity.
    private(set) var certificate: [UInt8]?
    private let verify: ClientCertificateVerifier
    private var verifiedAt = NIODeadline.now()

    /// A connection lives longer than a certificate's validity or its revocation: its certificate is
    /// checked again before a call when the last check is older than this.
    static let recheckInterval = TimeAmount.seconds(5)

    init(verify: @escaping ClientCertificateVerifier) { self.verify = verify }

    /// Decides on the leaf; records the verdict.
    @discardableResult
    func check(_ der: [UInt8]) -> Bool {
        certificate = der
        verifiedAt = .now()
        switch verify(der) {
        case .accepted(let identity):
            self.identity = identity
            return true
        case .refused(let reason):
            identity = nil
            refusal = reason
            return false
        }
    }

    /// Before a call: the identity, checked again if the last check is stale (expired or revoked
    /// since the handshake); nil with ``refusal`` set when it no longer holds.
    func currentIdentity() -> String? {
        if let certificate, identity != nil, NIODeadline.now() - verifiedAt > Self.recheckInterval { check(certificate) }
        return identity
    }

    /// NIOSSL's custom verification: our verifier decides, and its verdict is kept for the log.
    func verificationCallback() -> NIOSSLCustomVerificationCallback {
        { [self] certificates, promise in
            guard let leaf = certificates.first, let der = try? leaf.toDERBytes() else {
                refusal = "the client presented no certificate"
                promise.succeed(.failed)
                return
            }
            promise.succeed(check(der) ? .certificateVerified : .failed)
        }
    }

    /// A resumed TLS session skips the verification callback: check the certificate the session carries.
    func checkResumed(_ leaf: NIOSSLCertificate?) {
        guard identity == nil, refusal == nil, let der = try? leaf?.toDERBytes() else { return }
        check(der)
    }
}

/// Sits behind the TLS handler of a server that authenticates its clients: logs why a handshake
/// was refused, and closes a connection that did not negotiate HTTP/2 with ALPN before any of its
/// bytes reach the HTTP/2 session.
final class TLSPeerGate: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let authentication: PeerAuthentication
    private let requireHTTP2: Bool
    private let logger: Logger
    private var admitted = false

    init(authentication: PeerAuthentication, requireHTTP2: Bool, logger: Logger) {
        self.authentication = authentication
        self.requireHTTP2 = requireHTTP2
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard admitted else { return }
        context.fireChannelRead(data)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case TLSUserEvent.handshakeCompleted(let negotiated) = event {
            if authentication.identity == nil, let tls = try? context.pipeline.syncOperations.handler(type: NIOSSLServerHandler.self) {
                authentication.checkResumed(tls.peerCertificate)
            }
            if authentication.identity == nil {
                logger.warning(
                    "refused a connection",
                    metadata: [
                        "peer": "\(context.channel.remoteAddress?.description ?? "unknown")",
                        "cause": "\(authentication.refusal ?? "no verified client certificate (a resumed session without one?)")",
                    ])
                context.close(promise: nil)
                return
            }
            if requireHTTP2, negotiated != "h2" {
                logger.warning(
                    "refused a connection",
                    metadata: [
                        "peer": "\(context.channel.remoteAddress?.description ?? "unknown")", "caller": "\(authentication.identity ?? "none")",
                        "cause": "the client did not negotiate HTTP/2 with ALPN (negotiated: \(negotiated ?? "nothing")); gRPC over TLS needs ALPN h2",
                    ])
                context.close(promise: nil)
                return
            }
            admitted = true
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if !admitted, let failure = error as? NIOSSLError {
            logger.warning(
                "refused a TLS handshake",
                metadata: ["peer": "\(context.channel.remoteAddress?.description ?? "unknown")", "cause": "\(authentication.refusal ?? Self.describe(failure))"])
        }
        context.fireErrorCaught(error)
    }

    /// BoringSSL's reason in words a person reads.
    static func describe(_ error: NIOSSLError) -> String {
        let text = "\(error)"
        if text.contains("PEER_DID_NOT_RETURN_A_CERTIFICATE") || text.contains("CERTIFICATE_REQUIRED") {
            return "the client presented no certificate; platform services need the caller's platform certificate (mutual TLS)"
        }
        if text.contains("WRONG_VERSION_NUMBER") || text.contains("HTTP_REQUEST") {
            return "the client did not speak TLS (plaintext to a TLS port?)"
        }
        if text.contains("NO_APPLICATION_PROTOCOL") {
            return "the client offered no ALPN protocol this server speaks (h2)"
        }
        return text
    }
}
