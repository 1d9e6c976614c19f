import ArgumentParser
import Logging
import ServiceLifecycle
import SlipwayRPC
import SlipwayServiceKit

/// The logs service's own flags (limits and retention); defaults in ``LogsConfiguration``.
public struct LogsOptions: ParsableArguments, Sendable {
    @Option(help: "Longest line text in bytes; longer lines are split into parts.") var logsMaxLineBytes: Int?
    @Option(help: "Segment file size in bytes before a new one starts.") var logsSegmentBytes: Int?
    @Option(help: "Recent lines kept in memory per stream for live readers.") var logsWindowLines: Int?
    @Option(help: "Most concurrent Tail subscribers.") var logsMaxSubscribers: Int?
    @Option(help: "Remove lines older than this many seconds.") var logsRetentionMaxAge: Int?
    @Option(help: "Remove the oldest segments beyond this many bytes in total.") var logsRetentionMaxBytes: Int64?
    @Option(help: "Deployments whose logs are kept per service (newest).") var logsRetentionDeploymentsPerService: Int?
    @Option(help: "Seconds between retention passes.") var logsRetentionInterval: Int?

    public init() {}

    /// The configuration these flags describe; refuses values that make no sense.
    public func configuration() throws -> LogsConfiguration {
        var configuration = LogsConfiguration()
        if let value = try positiveOption(logsMaxLineBytes, "logs-max-line-bytes") { configuration.maxLineBytes = value }
        if let value = try positiveOption(logsSegmentBytes, "logs-segment-bytes") { configuration.segmentBytes = value }
        if let value = try positiveOption(logsWindowLines, "logs-window-lines") { configuration.windowLines = value }
        if let value = try positiveOption(logsMaxSubscribers, "logs-max-subscribers") { configuration.maxSubscribers = value }
        if let value = try positiveOption(logsRetentionMaxAge, "logs-retention-max-age") { configuration.retentionMaxAge = .seconds(value) }
        if let value = try positiveOption(logsRetentionMaxBytes, "logs-retention-max-bytes") { configuration.retentionMaxBytes = value }
        if let value = try positiveOption(logsRetentionDeploymentsPerService, "logs-retention-deployments-per-service") {
            configuration.retentionDeploymentsPerService = value
        }
        if let value = try positiveOption(logsRetentionInterval, "logs-retention-interval") { configuration.retentionInterval = .seconds(value) }
        return configuration
    }
}

/// `slipway-logs`: log ingest, durable storage, retention, real-time fan-out to subscribers.
public struct LogsComponent: PlatformComponent {
    let configuration: LogsConfiguration

    public init(configuration: LogsConfiguration = LogsConfiguration()) {
        self.configuration = configuration
    }

    /// A thousand tails each queueing up to the default 256 KiB would hold 256 MB while they lag;
    /// 64 KiB per stream keeps a lagging subscriber's queue small (it reads the rest from the window
    /// or disk when it catches up) without slowing a fast one.
    public var rpcLimits: RPCLimits {
        var limits = RPCLimits()
        limits.outboundHighWatermark = 64 * 1024
        return limits
    }

    public func setUp(configuration service: ServiceConfiguration, logger: Logger, router: inout RPCRouter) async throws -> [any Service] {
        let store = try LogStore(directory: try service.stateDirectory(), configuration: configuration, logger: logger)
        router.register(LogsService(store: store, logger: logger))
        return [RetentionService(store: store, logger: logger), MemoryReclaimer()]
    }
}
