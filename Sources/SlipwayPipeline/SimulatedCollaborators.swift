import Crypto
import Foundation

/// Stands in for the builder, cluster, network or certs service: every step takes `stepDelay` and
/// succeeds, nothing is built or run. It is what `--pipeline-simulate` selects for a service that is
/// not there (the cluster, network and certs services until their issues land), for tests and for
/// the control-plane benchmark.
///
/// A service's own environment variables can change what it does, so one pipeline can run services
/// that behave differently: `SLIPWAY_SIMULATE_STEP_MS` (the delay of each of its steps) and
/// `SLIPWAY_SIMULATE_FAIL=<STEP>` (that step fails, e.g. `BUILD` or `DEPLOYMENT`).
public struct SimulatedCollaborators: ImageCollaborator, ClusterCollaborator, NetworkCollaborator, CertificateCollaborator {
    public var stepDelay: Duration

    public init(stepDelay: Duration = .zero) {
        self.stepDelay = stepDelay
    }

    public static let failVariable = "SLIPWAY_SIMULATE_FAIL"
    public static let delayVariable = "SLIPWAY_SIMULATE_STEP_MS"

    private func step(_ step: PipelineStore.Step, _ work: ServiceWork) async throws {
        let variables = work.service.configuration.environmentVariables
        let delay = variables[Self.delayVariable].flatMap(Int.init).map { Duration.milliseconds($0) } ?? stepDelay
        if delay > .zero { try await Task.sleep(for: delay) }
        try Task.checkCancellation()
        if variables[Self.failVariable] == step.rawValue {
            throw StepFailure("simulated failure of \(step.rawValue) (\(Self.failVariable))", isBuildError: step == .build)
        }
    }

    public func build(_ work: ServiceWork, cloned: @escaping @Sendable (String) async -> Void) async throws -> BuiltImage {
        guard case .application(let git) = work.service.configuration.source else { throw StepFailure("not an application") }
        try await step(.gitClone, work)
        let commit = Self.isCommit(work.requestedVersion) ? work.requestedVersion : Self.hex("\(git.url)#\(git.branch)#\(work.requestedVersion)", 40)
        await cloned(commit)
        try await step(.build, work)
        return BuiltImage(commit: commit, image: "simulated/\(work.repository):\(commit.prefix(12))@sha256:\(Self.hex(commit, 64))", skipped: false)
    }

    public func mirror(_ work: ServiceWork) async throws -> BuiltImage {
        guard case .container(let image, let tag) = work.service.configuration.source else { throw StepFailure("not a container") }
        try await step(.mirrorImage, work)
        let chosen = work.requestedVersion.isEmpty ? tag : work.requestedVersion
        return BuiltImage(commit: "", image: "\(image):\(chosen)@sha256:\(Self.hex(image + chosen, 64))", skipped: false)
    }

    public func deploy(_ work: ServiceWork, image: String) async throws -> RunningStatus {
        try await step(.deployment, work)
        return .running
    }

    public func rollBack(_ work: ServiceWork, to previous: PipelineStore.Release?) async throws -> RunningStatus? {
        previous == nil ? nil : .running
    }

    public func restart(_ work: ServiceWork) async throws -> RunningStatus {
        try await step(.deployment, work)
        return .running
    }

    public func stop(_ work: ServiceWork) async throws -> RunningStatus {
        try await step(.deployment, work)
        return .stopped
    }

    public func delete(_ work: ServiceWork) async throws {
        try await step(.deployment, work)
    }

    public func route(_ work: ServiceWork) async throws {
        try await step(.routerDeployment, work)
    }

    public func removeRoutes(_ work: ServiceWork) async throws {
        try await step(.routerDeployment, work)
    }

    public func certificate(_ work: ServiceWork) async throws -> String {
        try await step(.certificate, work)
        return ""
    }

    static func isCommit(_ text: String) -> Bool {
        text.count == 40 && text.allSatisfy(\.isHexDigit)
    }

    static func hex(_ text: String, _ count: Int) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var hex: [UInt8] = []
        for byte in SHA256.hash(data: Data(text.utf8)) {
            hex.append(digits[Int(byte >> 4)])
            hex.append(digits[Int(byte & 15)])
        }
        return String(decoding: hex.prefix(count), as: UTF8.self)
    }
}
