import ArgumentParser
import SlipwayLogs
import SlipwayServiceKit

/// `slipway-logs`: log ingest, durable storage, retention, real-time fan-out to subscribers.
@main
struct Main: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "slipway-logs", abstract: "Slipway logs service: log ingest, durable storage, retention, real-time fan-out to subscribers.")

    @OptionGroup var options: ServiceOptions
    @OptionGroup var logs: LogsOptions

    func run() async throws {
        try await ServiceRunner.run(.logs, options: options, component: LogsComponent(configuration: try logs.configuration()))
    }
}
