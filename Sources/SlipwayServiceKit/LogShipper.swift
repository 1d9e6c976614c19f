import Foundation
import Logging
import SlipwayProtos
import SlipwayRPC
import Synchronization

/// One long-lived Append stream to the logs service, shared by every deployment of a process: lines
/// of all deployments queue together and leave in batches (up to ``maxLinesPerBatch``) while the
/// previous batch is being written, so a busy process sends few, large batches instead of one
/// message per line. The queue is bounded (``maxQueuedLines``); beyond it lines are counted as
/// dropped. When the logs service cannot be reached the shipper retries every second; lines queued
/// meanwhile wait (up to the bound), and batches not acknowledged when the connection broke are
/// sent again.
public final class LogShipper: Sendable {
    typealias LogsAPI = Slipway_Logs_V1_Logs

    public static let maxQueuedLines = 50_000
    public static let maxLinesPerBatch = 500

    private let lines = LineBatches(capacity: maxQueuedLines, batchSize: maxLinesPerBatch)
    private let client: RPCClient
    private let logger: Logger

    public init(client: RPCClient, logger: Logger) {
        self.client = client
        self.logger = logger
    }

    /// Lines dropped so far (queue full, or lost with a broken connection).
    public var droppedLines: Int { lines.dropped }

    /// Queues one line; never blocks.
    public func write(_ line: Slipway_Logs_V1_LogLine) {
        lines.push(line)
    }

    /// Sends until ``stop()``; run it in a task for the life of the process. A batch stays held
    /// until the logs service acknowledges it (it is then on disk); when the stream breaks, the
    /// batches it did not acknowledge go back to the front of the queue and are sent again on the
    /// next stream (a line can arrive twice only if the service stopped between writing it and
    /// acknowledging it). A batch the service refuses as invalid is dropped (counted).
    public func run() async {
        var reported = false
        while !lines.isClosed {
            do {
                try await lines.send(through: client)
                reported = false
            } catch {
                if lines.isClosed { return }
                if !reported {
                    logger.warning("cannot send deployment log lines to the logs service; retrying every second", metadata: ["error": "\(error)"])
                    reported = true
                }
                try? await Task.sleep(for: .seconds(1))
            }
        }
    }

    /// Ends ``run()`` once what is queued has been handed to the stream.
    public func stop() {
        lines.close()
    }
}

/// One deployment's lines through a shared ``LogShipper`` (nil: lines go nowhere).
public struct DeploymentLog: Sendable {
    let shipper: LogShipper?
    let key: Slipway_Logs_V1_StreamKey

    public init(shipper: LogShipper?, environmentID: String, deploymentID: String) {
        self.shipper = shipper
        var key = Slipway_Logs_V1_StreamKey()
        key.environmentId = environmentID
        key.deploymentId = deploymentID
        self.key = key
    }

    public func write(_ text: String, step: String, serviceID: String = "", level: Slipway_Logs_V1_Level = .info) {
        guard let shipper else { return }
        var line = Slipway_Logs_V1_LogLine()
        line.stream = key
        line.serviceId = serviceID
        line.step = step
        line.source = .system
        line.level = level
        line.text = text
        line.emittedNanos = Int64(Date().timeIntervalSince1970 * 1e9)
        shipper.write(line)
    }
}
