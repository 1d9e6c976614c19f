import Foundation
import Logging
import SlipwayProtos
import SlipwayRPC
import Synchronization

/// Lines for one deployment's stream in the logs service (the builder's git/buildah/skopeo output,
/// the pipeline's stage and step lines), sent as they are produced. Lines queue while a batch is in
/// flight and leave together in the next one; the queue is bounded (``maxQueuedLines``) so a stalled
/// logs service cannot grow the sender without limit — lines beyond it are counted and reported as
/// dropped.
public final class DeploymentLogWriter: Sendable {
    typealias LogsAPI = Slipway_Logs_V1_Logs

    public static let maxQueuedLines = 10_000
    public static let maxLinesPerBatch = 500

    private let lines = LineBatches(capacity: maxQueuedLines, batchSize: maxLinesPerBatch)
    private let recent = Mutex<[String]>([])
    private let key: Slipway_Logs_V1_StreamKey
    private let serviceId: String
    private let logger: Logger
    private let sender: Mutex<Task<Void, Never>?> = Mutex(nil)

    /// Lines go to `<environmentID>/<deploymentID>`, labelled with `serviceID` unless a line names
    /// its own. No client: lines are only kept for ``recentLines(_:)``.
    public init(client: RPCClient?, environmentID: String, deploymentID: String, serviceID: String = "", logger: Logger) {
        var key = Slipway_Logs_V1_StreamKey()
        key.environmentId = environmentID
        key.deploymentId = deploymentID
        self.key = key
        self.serviceId = serviceID
        self.logger = logger
        if let client {
            sender.withLock { $0 = Task { await self.send(through: client) } }
        }
    }

    /// Queues one line; never blocks.
    public func write(
        _ text: String, step: String, serviceID: String? = nil, source: Slipway_Logs_V1_Source = .system, level: Slipway_Logs_V1_Level = .info
    ) {
        var line = Slipway_Logs_V1_LogLine()
        line.stream = key
        line.serviceId = serviceID ?? serviceId
        line.step = step
        line.source = source
        line.level = level
        line.text = text
        line.emittedNanos = Int64(Date().timeIntervalSince1970 * 1e9)
        recent.withLock { recent in
            recent.append(text)
            if recent.count > 40 { recent.removeFirst(recent.count - 40) }
        }
        lines.push(line)
    }

    /// The last lines written (for error messages).
    public func recentLines(_ count: Int) -> [String] {
        recent.withLock { Array($0.suffix(count)) }
    }

    /// Sends what is queued and waits (up to `timeout`) until the logs service has it on disk.
    public func finish(timeout: Duration = .seconds(5)) async {
        lines.close()
        guard let task = sender.withLock({ $0 }) else { return }
        // Cancelling the sender ends its Append call: a stalled logs service cannot hold the result back.
        _ = try? await withTimeout(timeout) {
            await withTaskCancellationHandler { await task.value } onCancel: { task.cancel() }
        }
        let dropped = lines.dropped
        if dropped > 0 {
            logger.warning("deployment log lines dropped", metadata: ["deployment": "\(key.deploymentId)", "count": "\(dropped)"])
        }
    }

    /// Sends until ``finish(timeout:)``; a broken stream is opened again every second (batches the
    /// logs service had not acknowledged are sent again) until finish's time is up.
    private func send(through client: RPCClient) async {
        var reported = false
        while true {
            do {
                try await lines.send(through: client)
                return
            } catch {
                if !reported {
                    logger.warning("cannot send deployment log lines to the logs service; retrying every second", metadata: ["deployment": "\(key.deploymentId)", "error": "\(error)"])
                    reported = true
                }
                try? await Task.sleep(for: .seconds(1))
                if Task.isCancelled {
                    // finish() gave up waiting: what is left is counted as dropped.
                    lines.dropPending()
                    return
                }
            }
        }
    }
}
