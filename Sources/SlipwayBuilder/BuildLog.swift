import Logging
import SlipwayRPC
import SlipwayProtos
import SlipwayServiceKit

/// A build's log: a deployment log writer labelled with the build's service.
typealias BuildLog = DeploymentLogWriter

extension DeploymentLogWriter {
    convenience init(client: RPCClient?, context: Slipway_Builder_V1_BuildContext, logger: Logger) {
        self.init(client: client, environmentID: context.environmentId, deploymentID: context.deploymentId, serviceID: context.serviceId, logger: logger)
    }

    func write(_ text: String, step: Slipway_Builder_V1_Step, source: Slipway_Logs_V1_Source = .system, level: Slipway_Logs_V1_Level = .info) {
        write(text, step: step.name, source: source, level: level)
    }
}

extension Slipway_Builder_V1_Step {
    /// The step's name as docs/architecture.md and the deployment history spell it.
    var name: String {
        switch self {
        case .gitClone: "GIT_CLONE"
        case .build: "BUILD"
        case .push: "PUSH"
        case .mirrorImage: "MIRROR_IMAGE"
        default: ""
        }
    }
}

