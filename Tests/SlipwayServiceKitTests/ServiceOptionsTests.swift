import Foundation
import Testing
import SlipwayRPC

@testable import SlipwayServiceKit

@Suite struct ServiceOptionsTests {
    @Test func defaultsArePortsSevenThousandOnwardInOrder() throws {
        let configuration = try ServiceOptions.parse([]).resolve(for: .logs, environment: [:])
        #expect(configuration.listen == ServiceAddress(host: "127.0.0.1", port: 7006))
        #expect(ServiceName.allCases.map(\.defaultPort) == Array(7000...7006))
        #expect(configuration.directory[.gateway].port == 7000)
        // A relative data directory is made absolute (git and buildah run in other directories).
        #expect(configuration.dataDirectory == FileManager.default.currentDirectoryPath + "/.slipway")
    }

    @Test func environmentOverridesDefaultsAndFlagsOverrideEnvironment() throws {
        let environment = ["SLIPWAY_PIPELINE_LISTEN": "0.0.0.0:9001", "SLIPWAY_LOGS_LISTEN": "127.0.0.1:9006", "SLIPWAY_DATA_DIR": "/var/lib/slipway"]
        var options = try ServiceOptions.parse(["--logs-address", "10.0.0.5:7006"])
        let configuration = try options.resolve(for: .pipeline, environment: environment)
        #expect(configuration.listen == ServiceAddress(host: "0.0.0.0", port: 9001))
        #expect(configuration.directory[.logs] == ServiceAddress(host: "10.0.0.5", port: 7006))
        #expect(configuration.dataDirectory == "/var/lib/slipway")
        options = try ServiceOptions.parse(["--listen", ":8001", "--data-dir", "/tmp/d"])
        let overridden = try options.resolve(for: .pipeline, environment: environment)
        #expect(overridden.listen == ServiceAddress(host: "127.0.0.1", port: 8001))
        #expect(overridden.dataDirectory == "/tmp/d")
    }

    @Test(arguments: ["nonsense", "host:", "host:70000", ""])
    func malformedAddressesAreRefusedWithTheVariableName(_ value: String) {
        #expect {
            _ = try ServiceOptions.parse([]).resolve(for: .certs, environment: ["SLIPWAY_CERTS_LISTEN": value])
        } throws: { error in
            (error as? ConfigurationError)?.description.contains("SLIPWAY_CERTS_LISTEN") == true
        }
    }

    @Test func parsesIPv6Addresses() {
        #expect(ServiceAddress(parsing: "[::1]:7000") == ServiceAddress(host: "::1", port: 7000))
        #expect(ServiceAddress(host: "::1", port: 7000).description == "[::1]:7000")
    }
}
