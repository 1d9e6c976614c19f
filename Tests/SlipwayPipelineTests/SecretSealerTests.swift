import Foundation
import Testing

@testable import SlipwayPipeline

/// Secrets sealed with the key in the data directory.
@Suite struct SecretSealerTests {
    func keyFile() throws -> String {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("slipway-sealer-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        return directory + "/secrets.key"
    }

    @Test func sealedSecretsOpenWithTheSameKeyOnlyAndHideTheirValues() throws {
        let path = try keyFile()
        defer { try? FileManager.default.removeItem(atPath: (path as NSString).deletingLastPathComponent) }
        let sealer = try SecretSealer(keyFile: path)
        let secrets = ["API_TOKEN": "s3cr3t-value", "EMPTY": ""]
        let sealed = try sealer.seal(secrets)
        #expect(!String(decoding: sealed, as: UTF8.self).contains("s3cr3t-value"))
        #expect(try sealer.open(sealed) == secrets)
        // Each sealing has its own nonce.
        #expect(try sealer.seal(secrets) != sealed)

        // The key file is 32 bytes, readable by its owner only, and a second sealer reuses it.
        let attributes = try FileManager.default.attributesOfItem(atPath: path)
        #expect((attributes[.posixPermissions] as? Int) == 0o600)
        #expect((attributes[.size] as? Int) == 32)
        #expect(try SecretSealer(keyFile: path).open(sealed) == secrets)

        // Another key cannot open it, and a changed byte is refused.
        let other = try keyFile()
        defer { try? FileManager.default.removeItem(atPath: (other as NSString).deletingLastPathComponent) }
        #expect(throws: (any Error).self) { try SecretSealer(keyFile: other).open(sealed) }
        var tampered = sealed
        tampered[tampered.count / 2] ^= 1
        #expect(throws: (any Error).self) { try sealer.open(tampered) }
    }

    @Test func anOwnershipTokenIsTheOrganizationsForTheDomainAndStableAcrossRestarts() throws {
        let path = try keyFile()
        defer { try? FileManager.default.removeItem(atPath: (path as NSString).deletingLastPathComponent) }
        let token = try SecretSealer(keyFile: path).ownershipToken(organizationID: "org_a", domain: "shop.example.com")
        #expect(token.hasPrefix("slipway-verify=") && token.count == "slipway-verify=".count + 32)
        #expect(try SecretSealer(keyFile: path).ownershipToken(organizationID: "org_a", domain: "Shop.Example.com") == token)
        #expect(try SecretSealer(keyFile: path).ownershipToken(organizationID: "org_b", domain: "shop.example.com") != token)
        #expect(try SecretSealer(keyFile: path).ownershipToken(organizationID: "org_a", domain: "www.example.com") != token)
        // Another platform (another key) asks for another value.
        let other = try keyFile()
        defer { try? FileManager.default.removeItem(atPath: (other as NSString).deletingLastPathComponent) }
        #expect(try SecretSealer(keyFile: other).ownershipToken(organizationID: "org_a", domain: "shop.example.com") != token)
    }

    @Test func aKeyFileOfTheWrongSizeIsRefusedWithWhatToDo() throws {
        let path = try keyFile()
        defer { try? FileManager.default.removeItem(atPath: (path as NSString).deletingLastPathComponent) }
        try Data(repeating: 7, count: 31).write(to: URL(fileURLWithPath: path))
        #expect {
            _ = try SecretSealer(keyFile: path)
        } throws: { error in
            "\(error)".contains("is not a 256-bit key")
        }
    }
}
