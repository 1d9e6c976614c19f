import ArgumentParser
import Foundation
import SlipwayProtos
import SlipwayRPC
import SlipwayServiceKit

/// `slipway quota show|set`: what an organization may hold. Anyone in the organization reads its
/// quotas through the gateway; only the platform's operator changes them, on the platform's machine
/// with the `operator` identity (an organization admin cannot raise its own).
struct QuotaCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "quota", abstract: "An organization's quotas.", subcommands: [Show.self, Set.self])

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The organization's quotas, what it holds of each, and which the operator set for it.")
        @OptionGroup var client: ClientOptions
        @OptionGroup var target: TargetOptions

        func run() async throws {
            try await withGateway(client) { gateway, out in
                var request = Slipway_Pipeline_V1_GetOrganizationQuotasRequest()
                request.organizationId = try await target.organization(gateway).id
                QuotaCommand.show(try await gateway.call(Slipway_Api_V1_Slipway.GetOrganizationQuotas.self, request), out)
            }
        }
    }

    struct Set: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Set an organization's own quotas (the operator's, on the platform's machine).",
            discussion: """
                Talks to slipway-pipeline directly with the operator identity of the data directory.
                Quotas: \(["projects", "environments", "services", "memory-mib", "custom-domains", "concurrent-builds"].joined(separator: ", ")).
                Example: slipway quota set --org acme services=1000 memory-mib=524288 --reset projects
                """)
        @Option(help: "Data directory (env SLIPWAY_DATA_DIR, default ./.slipway).") var dataDir: String?
        @Option(help: "The pipeline, HOST:PORT (env SLIPWAY_PIPELINE_LISTEN, default 127.0.0.1:7001).") var pipeline: String?
        @Option(help: "Organization, name or id.") var org: String
        @Option(help: "A quota given back to the platform's default (repeatable).") var reset: [String] = []
        @Option(name: [.customShort("o"), .long], help: "Output: text or json.") var output: OutputFormat = .text
        @Argument(help: "NAME=VALUE, each a quota and the organization's own limit.") var limits: [String] = []

        func run() async throws {
            guard !limits.isEmpty || !reset.isEmpty else { throw CLIError.usage("give NAME=VALUE limits or --reset NAME") }
            var request = Slipway_Pipeline_V1_SetOrganizationQuotasRequest()
            for assignment in limits {
                let parts = assignment.split(separator: "=", maxSplits: 1).map(String.init)
                guard parts.count == 2, let value = UInt64(parts[1]) else { throw CLIError.usage("\"\(assignment)\" is not NAME=VALUE") }
                request.limits[parts[0]] = value
            }
            request.reset = reset
            let environment = ProcessInfo.processInfo.environment
            var data = dataDir ?? environment["SLIPWAY_DATA_DIR"] ?? "./.slipway"
            if !data.hasPrefix("/") { data = URL(fileURLWithPath: data).standardizedFileURL.path }
            let pki = PlatformPKI(dataDirectory: data)
            guard FileManager.default.fileExists(atPath: pki.caCertificatePath) else {
                throw CLIError.failed("no platform in \(data): quotas are set on the platform's machine (--data-dir)")
            }
            let address = pipeline ?? environment["SLIPWAY_PIPELINE_LISTEN"] ?? "127.0.0.1:7001"
            guard let parsed = ServiceAddress(parsing: address) else { throw CLIError.usage("--pipeline must be HOST:PORT, got \"\(address)\"") }
            let client = try pki.operatorIdentity().client(for: .pipeline, at: parsed)
            defer { Task { await client.close() } }
            do {
                let organizations = try await client.unary(Slipway_Pipeline_V1_Pipeline.ListOrganizations.self, .init()).organizations
                request.organizationId = try TargetOptions.pick(organizations, org, kind: "organization", flag: "org", in: "", id: \.id, name: \.name).id
                QuotaCommand.show(try await client.unary(Slipway_Pipeline_V1_Pipeline.SetOrganizationQuotas.self, request), Output(output))
            } catch let error as RPCError {
                // The exit codes of docs/cli.md, as for a call through the gateway.
                if error.code == .unavailable {
                    throw CLIError(message: "slipway-pipeline at \(address) cannot be reached (\(error.message)); is the platform up? (slipway up)", exitCode: 5)
                }
                throw CLIError(error, gateway: address)
            }
        }
    }

    static func show(_ quotas: Slipway_Pipeline_V1_OrganizationQuotas, _ out: Output) {
        if out.json {
            return out.emit([
                "organization_id": quotas.organizationId,
                "quotas": quotas.quotas.map { ["name": $0.name, "limit": $0.limit, "used": $0.used, "overridden": $0.overridden] as [String: Any] },
            ] as [String: Any])
        }
        out.table(["QUOTA", "USED", "LIMIT", "SET BY"], quotas.quotas.map { [$0.name, String($0.used), String($0.limit), $0.overridden ? "operator" : "default"] })
    }
}
