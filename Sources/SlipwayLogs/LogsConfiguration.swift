/// The logs service's limits and retention policy. Every value is documented in docs/limits.md.
public struct LogsConfiguration: Sendable {
    /// Longest line text stored as one line, in bytes; longer text is split into parts (`continued`).
    public var maxLineBytes = 16 * 1024
    /// Most lines in one Append batch.
    public var maxLinesPerBatch = 10_000
    /// A segment file is closed and a new one started past this size.
    public var segmentBytes = 8 * 1024 * 1024
    /// Most recent lines of each stream kept in memory for live readers.
    public var windowLines = 4096
    /// Most concurrent Tail subscribers; beyond it Tail answers RESOURCE_EXHAUSTED.
    public var maxSubscribers = 20_000
    /// Lines older than this are removed (whole segments). Default 7 days.
    public var retentionMaxAge: Duration = .seconds(7 * 24 * 3600)
    /// Total bytes on disk; the oldest segments go first beyond it. Default 10 GiB.
    public var retentionMaxBytes: Int64 = 10 * 1024 * 1024 * 1024
    /// Deployments whose logs are kept per service, the newest (as Qovery does). A deployment's
    /// stream stays while it is among the newest N of any service its lines name. Default 20.
    public var retentionDeploymentsPerService = 20
    /// How often retention runs.
    public var retentionInterval: Duration = .seconds(60)

    public init() {}
}
