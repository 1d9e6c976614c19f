import Foundation
import Logging
import SlipwayProtos
import SlipwayRPC
import SlipwayRegistry
import SlipwayTestSupport
import Synchronization
import Testing

@testable import SlipwayBuilder
@testable import SlipwayLogs

/// The real parts a builder test runs against: a `docker-registry` seeded with the busybox base
/// image, an in-process logs service, the builder service over RPC, and a scratch directory for
/// git repositories. Everything stops when the test's body returns.
struct BuilderTestEnvironment: Sendable {
    typealias API = Slipway_Builder_V1_Builder
    typealias LogsAPI = Slipway_Logs_V1_Logs

    let directory: String
    let registry: TestRegistry
    let builder: RPCClient
    let logs: RPCClient

    static let repositoryRoot: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    /// Registry storage shared by every test of the run: the base image is seeded once.
    static let registryStorage: String = temporaryDirectory("registry")

    static func temporaryDirectory(_ name: String) -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("slipway-builder-test-\(name)-\(UUID().uuidString)").path
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    static func with(
        configure: (inout BuilderConfiguration) -> Void = { _ in },
        _ body: @Sendable (BuilderTestEnvironment) async throws -> Void
    ) async throws {
        let directory = temporaryDirectory("env")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let registry = try await TestRegistry.start(storage: registryStorage)
        defer { registry.stop() }
        try await registry.seed()

        var logger = Logger(label: "test")
        logger.logLevel = .critical
        var logsConfiguration = LogsConfiguration()
        logsConfiguration.segmentBytes = 1 << 20
        let store = try LogStore(directory: directory + "/logs", configuration: logsConfiguration, logger: logger)
        var logsRouter = RPCRouter()
        logsRouter.register(LogsService(store: store, logger: logger))
        let logsServer = RPCServer(host: "127.0.0.1", port: 0, router: logsRouter, logger: logger)

        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await logsServer.run() }
            let logs = RPCClient(host: "127.0.0.1", port: try await logsServer.listeningAddress.port!)

            var configuration = BuilderConfiguration()
            configuration.registry = RegistryTarget(host: registry.host, insecure: true)
            // The tests' repositories: under repos/ on disk and a plain-http git server on loopback.
            try FileManager.default.createDirectory(atPath: directory + "/repos", withIntermediateDirectories: true)
            configuration.sources = SourcePolicy(allowHTTP: true, localRoots: [directory + "/repos"])
            configure(&configuration)
            let engine = try Builder(configuration: configuration, stateDirectory: directory + "/builder", logsClient: logs, logger: logger)
            var router = RPCRouter()
            router.register(BuilderService(builder: engine))
            let builderServer = RPCServer(host: "127.0.0.1", port: 0, router: router, logger: logger)
            group.addTask { try await builderServer.run() }
            let builder = RPCClient(host: "127.0.0.1", port: try await builderServer.listeningAddress.port!)

            let environment = BuilderTestEnvironment(directory: directory, registry: registry, builder: builder, logs: logs)
            var failure: (any Error)?
            do {
                try await body(environment)
            } catch {
                failure = error
            }
            await builder.close()
            await logs.close()
            builderServer.shutdown()
            logsServer.shutdown()
            try await group.waitForAll()
            if let failure { throw failure }
        }
    }

    // MARK: Git

    /// A new git repository holding a copy of examples/hello, committed; returns its path.
    func makeRepository(_ name: String = "hello") throws -> String {
        let path = directory + "/repos/" + name
        try FileManager.default.createDirectory(atPath: directory + "/repos", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: Self.repositoryRoot + "/examples/hello", toPath: path)
        try git(path, "init", "--quiet", "--initial-branch", "main")
        try commit(path, "hello")
        return path
    }

    /// Writes `files` (path → content) into the repository and commits; returns the new commit.
    @discardableResult
    func commit(_ repository: String, _ message: String, files: [String: String] = [:]) throws -> String {
        for (file, content) in files {
            let url = URL(fileURLWithPath: repository + "/" + file)
            try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            try Data(content.utf8).write(to: url)
        }
        try git(repository, "add", "-A")
        try git(repository, "commit", "--quiet", "--allow-empty", "-m", message)
        return try git(repository, "rev-parse", "HEAD").trimmingCharacters(in: .whitespacesAndNewlines)
    }

    @discardableResult
    func git(_ repository: String, _ arguments: String...) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/git")
        process.arguments = ["-C", repository] + arguments
        var environment = ProcessInfo.processInfo.environment
        environment["GIT_AUTHOR_NAME"] = "Slipway Test"
        environment["GIT_AUTHOR_EMAIL"] = "test@slipway.invalid"
        environment["GIT_COMMITTER_NAME"] = "Slipway Test"
        environment["GIT_COMMITTER_EMAIL"] = "test@slipway.invalid"
        process.environment = environment
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let output = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw TestFailure("git \(arguments.joined(separator: " ")) failed in \(repository)") }
        return String(decoding: output, as: UTF8.self)
    }

    // MARK: Requests

    /// A build request for `repository` at `commit`, on the test registry's base image.
    func buildRequest(_ repository: String, commit: String = "", id: String = UUID().uuidString, imageName: String = "tests/hello") -> Slipway_Builder_V1_BuildRequest {
        var request = Slipway_Builder_V1_BuildRequest()
        request.buildId = id
        var context = Slipway_Builder_V1_BuildContext()
        context.environmentId = "test"
        context.deploymentId = "deploy-\(id)"
        context.serviceId = "hello"
        request.context = context
        var git = Slipway_Builder_V1_GitSource()
        git.url = repository
        git.commit = commit
        request.git = git
        request.repository = imageName
        request.buildArgs = ["BASE": "\(registry.host)/slipway/busybox:latest"]
        return request
    }

    /// Runs a build to its end; returns every event, the result last.
    func build(_ request: Slipway_Builder_V1_BuildRequest) async throws -> BuildRun {
        try await builder.serverStreaming(API.Build.self, request) { try await BuildRun.collect($0) }
    }

    func mirror(_ request: Slipway_Builder_V1_MirrorRequest) async throws -> BuildRun {
        try await builder.serverStreaming(API.Mirror.self, request) { try await BuildRun.collect($0) }
    }

    /// Every line of a deployment's log stream.
    func logLines(deployment: String) async throws -> [Slipway_Logs_V1_LogLine] {
        var request = Slipway_Logs_V1_QueryRequest()
        var key = Slipway_Logs_V1_StreamKey()
        key.environmentId = "test"
        key.deploymentId = deployment
        request.stream = key
        request.pageSize = 1000
        var lines: [Slipway_Logs_V1_LogLine] = []
        while true {
            let page = try await logs.unary(LogsAPI.Query.self, request)
            lines += page.lines
            if page.nextPageToken.isEmpty { return lines }
            request.pageToken = page.nextPageToken
        }
    }

    /// Waits, through a live Tail, for a line of `deployment` containing `text`.
    func waitForLogLine(deployment: String, containing text: String) async throws -> Slipway_Logs_V1_LogLine {
        var request = Slipway_Logs_V1_TailRequest()
        var key = Slipway_Logs_V1_StreamKey()
        key.environmentId = "test"
        key.deploymentId = deployment
        request.stream = key
        request.start = .afterSeq(0)
        var filter = Slipway_Logs_V1_Filter()
        filter.contains = text
        request.filter = filter
        return try await logs.serverStreaming(LogsAPI.Tail.self, request, options: CallOptions(timeout: .seconds(120))) { responses in
            for try await response in responses {
                if case .line(let line)? = response.item { return line }
            }
            throw TestFailure("the log stream of \(deployment) ended without a line containing \(text)")
        }
    }
}

/// What one Build or Mirror call streamed.
struct BuildRun: Sendable {
    var steps: [Slipway_Builder_V1_StepEvent] = []
    var queued: [Slipway_Builder_V1_QueuedEvent] = []
    var result: Slipway_Builder_V1_BuildResult

    static func collect(_ responses: ResponseStream<Slipway_Builder_V1_BuildEvent>) async throws -> BuildRun {
        var steps: [Slipway_Builder_V1_StepEvent] = []
        var queued: [Slipway_Builder_V1_QueuedEvent] = []
        for try await event in responses {
            switch event.event {
            case .step(let step)?: steps.append(step)
            case .queued(let position)?: queued.append(position)
            case .result(let result)?: return BuildRun(steps: steps, queued: queued, result: result)
            case nil: break
            }
        }
        throw TestFailure("the build ended without a result")
    }

    /// The final state of each step, in order: "GIT_CLONE:stepSucceeded", ...
    var stepOutcomes: [String] {
        steps.filter { $0.state != .stepStarted }.map { "\($0.step.name):\($0.state)" }
    }
}
