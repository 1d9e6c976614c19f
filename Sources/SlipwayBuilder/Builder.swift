import Crypto
import Foundation
import Logging
import SlipwayIsolation
import SlipwayProcess
import SlipwayProtos
import SlipwayRPC
import SlipwayRegistry
import SlipwayServiceKit
import Synchronization

/// The builder's engine: runs builds and mirrors in build slots, each as a task that Cancel or the
/// timeout can stop, and reports their steps and result through an event sink.
final class Builder: Sendable {
    typealias Event = Slipway_Builder_V1_BuildEvent
    typealias EventSink = @Sendable (Event) async -> Void

    let configuration: BuilderConfiguration
    let mirrors: GitMirrors
    let tools: ImageTools
    let slots: BuildSlots
    let logsClient: RPCClient?
    let workDirectory: String
    let ledger: ProcessLedger
    let logger: Logger
    /// How RUN steps are isolated (nil: chroot on the host's network, as root — trusted Dockerfiles only).
    let isolation: BuildIsolation?
    private let active = Mutex<[String: ActiveBuild]>([:])

    init(configuration: BuilderConfiguration, stateDirectory: String, logsClient: RPCClient?, isolation: BuildIsolation? = nil, logger: Logger) throws {
        self.configuration = configuration
        self.isolation = isolation
        // Builds a crashed previous life left running (git and buildah outlive the service) are
        // stopped before anything else: their results went nowhere and they hold build slots' worth of CPU.
        self.ledger = try ProcessLedger(directory: stateDirectory + "/processes")
        let leftovers = ledger.killLeftovers()
        if leftovers > 0 {
            logger.warning("stopped builds left running by the previous builder process", metadata: ["processes": "\(leftovers)"])
        }
        self.mirrors = try GitMirrors(directory: stateDirectory + "/git", limits: .init(fetchTimeout: configuration.fetchTimeout, maxRepositoryBytes: configuration.maxRepositoryBytes), ledger: ledger)
        self.tools = ImageTools(storageRoot: stateDirectory + "/containers")
        self.slots = BuildSlots(capacity: configuration.maxConcurrentBuilds, maxQueued: configuration.maxQueuedBuilds)
        self.logsClient = logsClient
        self.workDirectory = stateDirectory + "/work"
        self.logger = logger
        // Work directories of builds that were running when the service last stopped, and the
        // RUN steps their runtime left running (buildah was stopped above; its steps were not).
        for build in (try? FileManager.default.contentsOfDirectory(atPath: workDirectory)) ?? [] {
            RuntimeShim.stopContainers(directory: workDirectory + "/" + build + "/runtime")
        }
        try? FileManager.default.removeItem(atPath: workDirectory)
        try FileManager.default.createDirectory(atPath: workDirectory, withIntermediateDirectories: true)
    }

    /// A build or mirror in flight: its task, and why it was stopped (if it was).
    final class ActiveBuild: Sendable {
        let stop = Mutex<(task: Task<Void, Never>?, reason: BuildFailure.Kind?)>((nil, nil))

        func stop(_ reason: BuildFailure.Kind) {
            let task = stop.withLock { state -> Task<Void, Never>? in
                if state.reason == nil { state.reason = reason }
                return state.task
            }
            task?.cancel()
        }

        var reason: BuildFailure.Kind? { stop.withLock { $0.reason } }
    }

    // MARK: Entry points

    func build(_ request: Slipway_Builder_V1_BuildRequest, events: @escaping EventSink) async throws(RPCError) {
        let validated = try ValidatedBuild(request, defaultRegistry: configuration.registry, sources: configuration.sources)
        if let asked = validated.network {
            guard let isolation else {
                throw RPCError(.failedPrecondition, "network \(asked.rawValue): this builder runs RUN steps unisolated on the host's network (--builder-isolation off); leave network unset")
            }
            _ = try isolation.network(for: asked)
        }
        try await run(id: request.buildId, context: request.context ?? .init(), timeout: validated.timeout(default: configuration.buildTimeout), firstStep: .gitClone, events: events) { job in
            try await self.runBuild(validated, job)
        }
    }

    func mirror(_ request: Slipway_Builder_V1_MirrorRequest, events: @escaping EventSink) async throws(RPCError) {
        let validated = try ValidatedMirror(request, defaultRegistry: configuration.registry, operatorRegistries: configuration.insecureRegistries)
        // A request may shorten the operator's limit, never extend it.
        let timeout = request.timeoutSeconds > 0 ? min(Duration.seconds(Int(request.timeoutSeconds)), configuration.buildTimeout) : configuration.buildTimeout
        try await run(id: request.buildId, context: request.context ?? .init(), timeout: timeout, firstStep: .mirrorImage, events: events) { job in
            try await self.runMirror(validated, job)
        }
    }

    /// Stops a queued or running build; false when there is none with this id.
    func cancel(_ id: String) -> Bool {
        guard let build = active.withLock({ $0[id] }) else { return false }
        build.stop(.canceled)
        return true
    }

    func resolveCommit(_ source: Slipway_Builder_V1_GitSource) async throws(RPCError) -> String {
        var source = source
        source.commit = ""
        let transport = try ValidatedBuild.validate(source, sources: configuration.sources)
        do {
            return try await mirrors.fetch(source, transport: transport) { _ in }
        } catch {
            throw error.rpcError
        }
    }

    // MARK: Jobs

    /// What a running job uses: its log, and step reporting with durations.
    struct Job: Sendable {
        let log: BuildLog
        let steps: StepRecorder
        let workDirectory: String
    }

    private func run(
        id: String, context: Slipway_Builder_V1_BuildContext, timeout: Duration, firstStep: Slipway_Builder_V1_Step,
        events: @escaping EventSink, _ work: @escaping @Sendable (Job) async throws -> Slipway_Builder_V1_BuildResult
    ) async throws(RPCError) {
        let build = ActiveBuild()
        let registered = active.withLock { active -> Bool in
            guard active[id] == nil else { return false }
            active[id] = build
            return true
        }
        guard registered else { throw RPCError(.alreadyExists, "a build with id \(id) is already queued or running; cancel it or choose another build_id") }
        defer { _ = active.withLock { $0.removeValue(forKey: id) } }

        let log = BuildLog(client: logsClient, context: context, logger: logger)
        let job = Job(log: log, steps: StepRecorder(events: events, log: log, first: firstStep), workDirectory: workDirectory + "/" + UUID().uuidString)
        let slots = self.slots
        let logger = self.logger
        let queueRefusal = Mutex<RPCError?>(nil)
        let task = Task {
            var result: Slipway_Builder_V1_BuildResult
            do {
                try await slots.acquire { position in
                    var queued = Slipway_Builder_V1_QueuedEvent()
                    queued.position = UInt32(position)
                    var event = Event()
                    event.event = .queued(queued)
                    await events(event)
                    log.write("waiting for a build slot (place \(position) in line)", step: firstStep)
                }
            } catch let error as RPCError {
                queueRefusal.withLock { $0 = error }
                return
            } catch {
                await Self.finish(Self.stopped(build.reason ?? .canceled, step: firstStep, "while waiting for a build slot"), job: job, events: events)
                return
            }
            let timer = Task {
                try await Task.sleep(for: timeout)
                build.stop(.timedOut)
            }
            do {
                result = try await work(job)
            } catch {
                let error = (error as? BuildFailure) ?? BuildFailure(kind: .canceled, step: job.steps.current ?? firstStep, "\(error)")
                let kind = error.kind == .canceled ? (build.reason ?? .canceled) : error.kind
                // A failure names its step; a stop happened in whatever step was running.
                let step = error.reason != nil ? error.step : (job.steps.current ?? error.step)
                switch kind {
                case .failed(let reason):
                    await job.steps.end(.stepFailed, message: error.message)
                    result = Self.failure(reason, step: step, error.message)
                case .canceled, .timedOut:
                    await job.steps.end(.stepCanceled, message: kind == .timedOut ? "timed out" : "canceled")
                    result = Self.stopped(kind, step: step, kind == .timedOut ? "stopped after the build's limit of \(timeout)" : "canceled")
                }
            }
            timer.cancel()
            await slots.release()
            try? FileManager.default.removeItem(atPath: job.workDirectory)
            if result.outcome != .buildSucceeded {
                logger.info("build ended", metadata: ["build": "\(id)", "outcome": "\(result.outcome)", "reason": "\(result.reason)", "message": "\(result.message)"])
            }
            await Self.finish(result, job: job, events: events)
        }
        build.stop.withLock { $0.task = task }
        if build.reason != nil { task.cancel() }
        await withTaskCancellationHandler {
            await task.value
        } onCancel: {
            // The caller went away (client cancel, deadline): the build stops with it.
            build.stop(.canceled)
        }
        if let refusal = queueRefusal.withLock({ $0 }) {
            await log.finish()
            throw refusal
        }
    }

    private static func finish(_ result: Slipway_Builder_V1_BuildResult, job: Job, events: EventSink) async {
        var result = result
        // A full disk is the cause to name, whatever the tool that hit it said.
        if result.outcome == .buildFailed { result.message += DiskSpace.fullNote(job.workDirectory) }
        let summary: String
        switch result.outcome {
        case .buildSucceeded: summary = result.skipped ? "image \(result.image?.reference ?? "") already in the registry" : "pushed \(result.image?.reference ?? "") \(result.image?.digest ?? "")"
        case .buildCanceled: summary = "canceled"
        case .buildTimedOut: summary = "timed out: \(result.message)"
        default: summary = "failed: \(result.message)"
        }
        job.log.write(summary, step: result.step == .stepUnspecified ? (job.steps.last ?? .build) : result.step, level: result.outcome == .buildSucceeded ? .info : .error)
        // The log is on disk before the result is announced: whoever reads the result finds the lines.
        await job.log.finish()
        var event = Event()
        event.event = .result(result)
        await events(event)
    }

    static func failure(_ reason: Slipway_Builder_V1_FailureReason, step: Slipway_Builder_V1_Step, _ message: String) -> Slipway_Builder_V1_BuildResult {
        var result = Slipway_Builder_V1_BuildResult()
        result.outcome = .buildFailed
        result.reason = reason
        result.step = step
        result.message = message
        return result
    }

    static func stopped(_ kind: BuildFailure.Kind, step: Slipway_Builder_V1_Step, _ message: String) -> Slipway_Builder_V1_BuildResult {
        var result = Slipway_Builder_V1_BuildResult()
        result.outcome = kind == .timedOut ? .buildTimedOut : .buildCanceled
        result.step = step
        result.message = message
        return result
    }

    // MARK: Build

    private func runBuild(_ build: ValidatedBuild, _ job: Job) async throws(BuildFailure) -> Slipway_Builder_V1_BuildResult {
        let log = job.log
        await job.steps.start(.gitClone, "fetching \(GitMirrors.redacted(build.git.url))")
        let commit = try await mirrors.fetch(build.git, transport: build.transport) { log.write($0, step: .gitClone, source: .stderr) }
        await job.steps.end(.stepSucceeded, message: "commit \(commit)")

        // BUILD: unless the registry has the image already; the Dockerfile comes from the mirror,
        // so a skipped build checks nothing out.
        await job.steps.start(.build, "building commit \(commit.prefix(12))")
        guard let dockerfile = try await mirrors.readFile(build.git.url, commit: commit, path: build.dockerfileInRepository) else {
            throw BuildFailure(.buildError, step: .build, "commit \(commit.prefix(12)) has no \(build.dockerfileInRepository)")
        }
        let tag = build.imageTag(commit: commit, dockerfile: dockerfile)
        let image = ImageReference(host: build.registry.host, repository: build.repository, tag: tag)
        let registry = build.registry.client
        let existing: String?
        do {
            existing = try await registry.manifestDigest(repository: image.repository, reference: tag)
        } catch {
            throw BuildFailure(error.kind == .unauthorized ? .authenticationFailed : .registryError, step: .build, "cannot check the registry for \(image): \(error.description)")
        }
        var result = Slipway_Builder_V1_BuildResult()
        result.outcome = .buildSucceeded
        result.commit = commit
        result.image = Self.image(image, digest: existing ?? "")

        if let existing {
            await job.steps.end(.stepSkipped, message: "\(image) is already in the registry (\(existing))")
            await job.steps.skip(.push, "nothing to push")
            result.skipped = true
            return result
        }

        let source = job.workDirectory + "/src"
        try await mirrors.checkout(build.git, transport: build.transport, commit: commit, into: source) { log.write($0, step: .build, source: .stderr) }
        log.write("building \(image)", step: .build)
        // Base images may come from the platform registry even when the image goes elsewhere.
        let files = try ToolFiles(directory: job.workDirectory + "/tools", registries: [build.registry, configuration.registry], extraInsecure: configuration.insecureRegistries)
        defer { files.remove() }
        let context = build.rootPath.isEmpty ? source : source + "/" + build.rootPath
        // The paths were checked as text; the tree may hold symlinks: both must stay inside it.
        for (path, field) in [(context, "root_path"), (source + "/" + build.dockerfileInRepository, "dockerfile_path")] {
            guard let resolved = Self.realPath(path), resolved == Self.realPath(source) || resolved.hasPrefix((Self.realPath(source) ?? source) + "/") else {
                throw BuildFailure(.buildError, step: .build, "\(field) leads outside the repository (a symlink?) or does not exist at commit \(commit.prefix(12))")
            }
        }
        var isolationArguments = ["--isolation", "chroot"]
        var attached: String?
        if let isolation {
            let network = (try? isolation.network(for: build.network)) ?? BuildIsolation.Network.none
            (isolationArguments, attached) = try await isolation.prepare(
                job: (job.workDirectory as NSString).lastPathComponent, directory: job.workDirectory + "/runtime", network: network)
        }
        let arguments = tools.buildArguments(
            context: context, dockerfile: source + "/" + build.dockerfileInRepository, tag: image.description, buildArgs: build.buildArgs,
            target: build.target, isolation: isolationArguments)
        let built: ChildProcess.Termination
        do throws(BuildFailure) {
            built = try await runTool("buildah", arguments, files: files, step: .build, job: job)
        } catch {
            await endSteps(job, attached: attached)
            throw error
        }
        await endSteps(job, attached: attached)
        guard built.succeeded else {
            throw BuildFailure(.buildError, step: .build, "the image build failed: \(Self.errorSummary(log.recentLines(12)))")
        }
        await job.steps.end(.stepSucceeded, message: "built \(image)")

        await job.steps.start(.push, "pushing \(image)")
        let digestFile = job.workDirectory + "/digest"
        let pushed: ChildProcess.Termination
        do throws(BuildFailure) {
            pushed = try await runTool("buildah", tools.pushArguments(tag: image.description, digestFile: digestFile), files: files, step: .push, job: job)
        } catch {
            await removePartialPush(image, registry: registry, previous: nil, log: log)
            throw error
        }
        guard pushed.succeeded, let digest = (try? String(contentsOfFile: digestFile, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines), digest.hasPrefix("sha256:") else {
            throw BuildFailure(.registryError, step: .push, "pushing to \(build.registry.host) failed: \(Self.errorSummary(log.recentLines(6)))")
        }
        await job.steps.end(.stepSucceeded, message: digest)
        result.image = Self.image(image, digest: digest)
        return result
    }

    /// A push cut short may have written the manifest (the tag) at its very end: remove it, so a tag
    /// in the registry always means a finished build. `previous` is the digest the tag had before
    /// (a mirror refreshing a moved tag): that image stays.
    private func removePartialPush(_ image: ImageReference, registry: RegistryClient, previous: String?, log: BuildLog) async {
        guard let digest = try? await registry.manifestDigest(repository: image.repository, reference: image.reference), digest != previous else { return }
        do {
            try await registry.deleteManifest(repository: image.repository, digest: digest)
            log.write("removed the partly pushed \(image)", step: .push)
        } catch {
            log.write("could not remove the partly pushed \(image): \(error.description)", step: .push, level: .warn)
        }
    }

    /// Runs buildah or skopeo, its output going to the build log; cancellation kills it and throws.
    /// After buildah: the build's steps (a cancelled or failed buildah may leave one running) and
    /// its network go.
    private func endSteps(_ job: Job, attached: String?) async {
        guard let isolation else { return }
        RuntimeShim.stopContainers(directory: job.workDirectory + "/runtime")
        if let attached { await isolation.networks?.detach(attached) }
    }

    private func runTool(_ tool: String, _ arguments: [String], files: ToolFiles, step: Slipway_Builder_V1_Step, job: Job) async throws(BuildFailure) -> ChildProcess.Termination {
        let log = job.log
        let termination: ChildProcess.Termination
        do {
            var process = ChildProcess(tool, arguments, environment: files.environment, workingDirectory: job.workDirectory)
            process.ledger = ledger
            termination = try await process.run { stream, line in
                log.write(line, step: step, source: stream == .stdout ? .stdout : .stderr, level: stream == .stderr && line.localizedCaseInsensitiveContains("error") ? .error : .info)
            }
        } catch {
            throw BuildFailure(.internalError(step), step: step, "cannot run \(tool): \(error)")
        }
        try Task.checkCancellation(or: .canceled(step))
        return termination
    }

    static func realPath(_ path: String) -> String? {
        guard let resolved = realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }

    /// The lines that say what went wrong: those mentioning an error, else the last ones.
    static func errorSummary(_ lines: [String]) -> String {
        let errors = lines.filter { $0.localizedCaseInsensitiveContains("error") }
        return (errors.isEmpty ? Array(lines.suffix(3)) : Array(errors.suffix(3))).joined(separator: " / ")
    }

    static func image(_ reference: ImageReference, digest: String) -> Slipway_Builder_V1_Image {
        var image = Slipway_Builder_V1_Image()
        image.reference = reference.description
        image.repository = reference.repository
        image.tag = reference.tag ?? ""
        image.digest = digest
        return image
    }

    // MARK: Mirror

    private func runMirror(_ mirror: ValidatedMirror, _ job: Job) async throws(BuildFailure) -> Slipway_Builder_V1_BuildResult {
        let log = job.log
        await job.steps.start(.mirrorImage, "mirroring \(mirror.source) into \(mirror.target.host)")
        var result = Slipway_Builder_V1_BuildResult()
        result.outcome = .buildSucceeded

        let sourceDigest: String?
        do {
            sourceDigest = try await mirror.sourceRegistry.client.manifestDigest(repository: mirror.source.repository, reference: mirror.source.reference)
        } catch {
            throw BuildFailure(error.kind == .unauthorized ? .authenticationFailed : .registryError, step: .mirrorImage, "cannot read \(mirror.source): \(error.description)")
        }
        guard let sourceDigest else {
            throw BuildFailure(.sourceImageNotFound, step: .mirrorImage, "\(mirror.source) does not exist")
        }
        if mirror.source.host == mirror.target.host {
            await job.steps.skip(.mirrorImage, "\(mirror.source) is already in the platform registry")
            result.skipped = true
            result.image = Self.image(mirror.source, digest: sourceDigest)
            return result
        }
        let targetRegistry = mirror.targetRegistry.client
        let existing: String?
        do {
            existing = try await targetRegistry.manifestDigest(repository: mirror.target.repository, reference: mirror.target.reference)
        } catch {
            throw BuildFailure(error.kind == .unauthorized ? .authenticationFailed : .registryError, step: .mirrorImage, "cannot check \(mirror.target): \(error.description)")
        }
        if existing == sourceDigest {
            await job.steps.skip(.mirrorImage, "\(mirror.target) is already there (\(sourceDigest))")
            result.skipped = true
            result.image = Self.image(mirror.target, digest: sourceDigest)
            return result
        }
        let files = try ToolFiles(directory: job.workDirectory + "/tools", registries: [mirror.sourceRegistry, mirror.targetRegistry, configuration.registry], extraInsecure: configuration.insecureRegistries)
        defer { files.remove() }
        let digestFile = job.workDirectory + "/digest"
        let copied: ChildProcess.Termination
        do throws(BuildFailure) {
            copied = try await runTool("skopeo", tools.copyArguments(source: mirror.source.description, destination: mirror.target.description, digestFile: digestFile, files: files), files: files, step: .mirrorImage, job: job)
        } catch {
            await removePartialPush(mirror.target, registry: targetRegistry, previous: existing, log: log)
            throw error
        }
        guard copied.succeeded, let digest = (try? String(contentsOfFile: digestFile, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines), digest.hasPrefix("sha256:") else {
            throw BuildFailure(.registryError, step: .mirrorImage, "copying \(mirror.source) failed: \(Self.errorSummary(log.recentLines(6)))")
        }
        await job.steps.end(.stepSucceeded, message: digest)
        result.image = Self.image(mirror.target, digest: digest)
        return result
    }
}

extension Slipway_Builder_V1_FailureReason {
    /// A failure of the builder itself (a tool that cannot start): reported as a registry/git error
    /// of the step, since the result has no separate reason for it.
    static func internalError(_ step: Slipway_Builder_V1_Step) -> Self {
        step == .gitClone ? .gitError : .registryError
    }
}

extension BuildFailure {
    /// For unary calls (ResolveCommit): the failure as a gRPC status.
    var rpcError: RPCError {
        switch kind {
        case .canceled: return RPCError(.cancelled, message)
        case .timedOut: return RPCError(.deadlineExceeded, message)
        case .failed(let reason):
            switch reason {
            case .repositoryNotFound, .commitNotFound, .sourceImageNotFound: return RPCError(.notFound, message)
            case .authenticationFailed: return RPCError(.permissionDenied, message)
            case .limitExceeded: return RPCError(.resourceExhausted, message)
            default: return RPCError(.unavailable, message)
            }
        }
    }
}

/// Reports steps as they start and end, with their durations, as events and as log lines.
final class StepRecorder: Sendable {
    private let events: Builder.EventSink
    private let log: BuildLog
    private let state: Mutex<(step: Slipway_Builder_V1_Step?, started: ContinuousClock.Instant)>
    private let lastStep = Mutex<Slipway_Builder_V1_Step?>(nil)

    /// The last step that started or was skipped.
    var last: Slipway_Builder_V1_Step? { lastStep.withLock { $0 } }

    init(events: @escaping Builder.EventSink, log: BuildLog, first: Slipway_Builder_V1_Step) {
        self.events = events
        self.log = log
        self.state = Mutex((nil, .now))
    }

    /// The step running now.
    var current: Slipway_Builder_V1_Step? { state.withLock { $0.step } }

    func start(_ step: Slipway_Builder_V1_Step, _ message: String) async {
        state.withLock { $0 = (step, .now) }
        lastStep.withLock { $0 = step }
        log.write(message, step: step)
        await send(step, .stepStarted, duration: nil, message: message)
    }

    func end(_ outcome: Slipway_Builder_V1_StepState, message: String) async {
        let ended = state.withLock { state -> (Slipway_Builder_V1_Step, Duration)? in
            guard let step = state.step else { return nil }
            state.step = nil
            return (step, ContinuousClock.now - state.started)
        }
        guard let (step, duration) = ended else { return }
        await send(step, outcome, duration: duration, message: message)
    }

    func skip(_ step: Slipway_Builder_V1_Step, _ message: String) async {
        lastStep.withLock { $0 = step }
        log.write("skipped: \(message)", step: step)
        await send(step, .stepSkipped, duration: .zero, message: message)
    }

    private func send(_ step: Slipway_Builder_V1_Step, _ state: Slipway_Builder_V1_StepState, duration: Duration?, message: String) async {
        var event = Slipway_Builder_V1_StepEvent()
        event.step = step
        event.state = state
        event.message = message
        if let duration {
            event.durationMillis = UInt64(duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000)
        }
        var wrapper = Builder.Event()
        wrapper.event = .step(event)
        await events(wrapper)
    }
}
