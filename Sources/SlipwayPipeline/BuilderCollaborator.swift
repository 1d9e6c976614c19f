import SlipwayProtobuf
import SlipwayProtos
import SlipwayRPC

/// The builder service over its RPC API (`slipway.builder.v1.Builder`): Build for applications,
/// Mirror for containers. Cancelling the task cancels the call, and the builder stops the build.
public struct BuilderCollaborator: ImageCollaborator {
    typealias API = Slipway_Builder_V1_Builder

    let client: RPCClient

    public init(client: RPCClient) {
        self.client = client
    }

    public func build(_ work: ServiceWork, cloned: @escaping @Sendable (String) async -> Void) async throws -> BuiltImage {
        guard case .application(let source) = work.service.configuration.source else { throw StepFailure("not an application") }
        var request = Slipway_Builder_V1_BuildRequest()
        request.buildId = "\(work.deploymentID)-\(work.service.id)"
        request.context = context(work)
        var git = Slipway_Builder_V1_GitSource()
        git.url = source.url
        if SimulatedCollaborators.isCommit(work.requestedVersion) {
            git.commit = work.requestedVersion
            git.allowUnreachableCommit = work.requestedCommitWasReleased
        } else {
            git.ref = work.requestedVersion.isEmpty ? source.branch : work.requestedVersion
        }
        request.git = git
        request.rootPath = source.rootPath
        request.dockerfilePath = source.dockerfilePath
        request.buildArgs = source.buildArgs
        switch source.buildNetwork {
        case nil: request.network = .unspecified
        case .nat?: request.network = .nat
        case .none?: request.network = .none
        }
        request.repository = work.repository
        return try await run(API.Build.self, request, cloned: cloned)
    }

    public func mirror(_ work: ServiceWork) async throws -> BuiltImage {
        guard case .container(let image, let tag) = work.service.configuration.source else { throw StepFailure("not a container") }
        var request = Slipway_Builder_V1_MirrorRequest()
        request.buildId = "\(work.deploymentID)-\(work.service.id)"
        request.context = context(work)
        request.sourceImage = "\(image):\(work.requestedVersion.isEmpty ? tag : work.requestedVersion)"
        request.repository = work.repository
        return try await run(API.Mirror.self, request, cloned: nil)
    }

    private func context(_ work: ServiceWork) -> Slipway_Builder_V1_BuildContext {
        var context = Slipway_Builder_V1_BuildContext()
        context.environmentId = work.environment.id
        context.deploymentId = work.deploymentID
        context.serviceId = work.service.id
        return context
    }

    private func run<M: ProtoMethod>(
        _ method: M.Type, _ request: M.Input, cloned: (@Sendable (String) async -> Void)?
    ) async throws -> BuiltImage where M.Output == Slipway_Builder_V1_BuildEvent {
        let result: Slipway_Builder_V1_BuildResult? = try await stepCall("slipway-builder") { try await client.serverStreaming(method, request) { events in
            for try await event in events {
                switch event.event {
                case .step(let step) where step.step == .build && step.state == .stepStarted:
                    await cloned?("")
                case .result(let result):
                    return result
                default:
                    continue
                }
            }
            return nil
        } }
        guard let result else { throw StepFailure("the builder ended the call without a result") }
        switch result.outcome {
        case .buildSucceeded:
            let image = result.image ?? Slipway_Builder_V1_Image()
            return BuiltImage(commit: result.commit, image: "\(image.reference)@\(image.digest)", skipped: result.skipped)
        case .buildCanceled:
            throw CancellationError()
        default:
            throw StepFailure(result.message.isEmpty ? "the build failed" : result.message, isBuildError: result.reason == .buildError)
        }
    }
}
