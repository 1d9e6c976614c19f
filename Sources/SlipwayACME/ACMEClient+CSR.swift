import Crypto
// SwiftASN1 is X509's own dependency (always built before X509): DER serialization of the CSR.
import SwiftASN1
import X509

extension ACMEClient {
    /// A PKCS#10 CSR in DER for `domains`, signed by `key`: the names as a subjectAltName extension request
    /// (what CAs issue for), the first name also as the common name when it fits the 64-character limit.
    static func certificateSigningRequest(domains: [String], key: P256.Signing.PrivateKey) throws -> [UInt8] {
        let extensions = try Certificate.Extensions {
            SubjectAlternativeNames(domains.map { .dnsName($0) })
        }
        let attributes = CertificateSigningRequest.Attributes([try .init(ExtensionRequest(extensions: extensions))])
        let subject = domains[0].utf8.count <= 64 ? try DistinguishedName { CommonName(domains[0]) } : DistinguishedName()
        let csr = try CertificateSigningRequest(
            version: .v1,
            subject: subject,
            privateKey: Certificate.PrivateKey(key),
            attributes: attributes,
            signatureAlgorithm: .ecdsaWithSHA256
        )
        var serializer = DER.Serializer()
        try serializer.serialize(csr)
        return serializer.serializedBytes
    }
}
