import Foundation
import X509

/// A certificate the CA issued: the chain as downloaded, parsed, and where it lives.
public struct IssuedCertificate: Sendable {
    /// The chain in PEM, leaf first, exactly as the CA sent it (what a TLS server is configured with).
    public var pemChain: String
    /// The chain parsed, leaf first.
    public var chain: [Certificate]
    /// The certificate URL (RFC 8555 §7.4.2), to download the chain again.
    public var certificateURL: URL

    /// The leaf certificate.
    public var leaf: Certificate { chain[0] }
    /// The leaf's notBefore.
    public var notBefore: Date { leaf.notValidBefore }
    /// The leaf's notAfter.
    public var notAfter: Date { leaf.notValidAfter }
    /// When to renew the leaf: two thirds into its lifetime.
    public var renewalDate: Date { ACMEClient.renewalDate(notBefore: notBefore, notAfter: notAfter) }
}

/// Revocation reasons ACME accepts (RFC 5280 §5.3.1, RFC 8555 §7.6).
public enum ACMERevocationReason: Int, Sendable {
    /// No reason given.
    case unspecified = 0
    /// The certificate's private key leaked or may have.
    case keyCompromise = 1
    /// The subject's name or organisation changed.
    case affiliationChanged = 3
    /// A new certificate replaces this one.
    case superseded = 4
    /// The names are no longer served.
    case cessationOfOperation = 5
}
