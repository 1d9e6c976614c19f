import SlipwayProtobuf
import SlipwayProtos
import SlipwayRPC

/// Who may call which internal method: the platform's one authorization table, applied by every
/// service's RPC server before any handler runs (``AccessPolicy``). docs/access.md is this table
/// (`slipway pki access` prints it; a test keeps the two equal).
///
/// Rules: a caller is named by its client certificate (`spiffe://slipway/<name>`). The operator
/// identity may call every method (like a cluster administrator's credentials). Health, reflection
/// and identity renewal are for any platform identity. A method without a row is for the operator
/// only, so a new method is closed until someone decides who calls it.
public enum AccessTable {
    public struct Row: Sendable {
        public let path: String
        public let callers: [ServiceName]
    }

    private static func row<M: ProtoMethod>(_ method: M.Type, _ callers: ServiceName...) -> Row {
        Row(path: method.path, callers: callers)
    }

    /// Methods every platform identity may call, on every service.
    public static let anyPlatformIdentity: [String] = [
        Grpc_Health_V1_Health.Check.path, Grpc_Health_V1_Health.Watch.path,
        Grpc_Reflection_V1_ServerReflection.ServerReflectionInfo.path,
        Grpc_Reflection_V1alpha_ServerReflection.ServerReflectionInfo.path,
        Slipway_Certs_V1_Certs.RenewIdentity.path,
    ]

    /// Each internal service's rows. The gateway is not here: its port is the public API, with its
    /// own token checks.
    public static let rows: [ServiceName: [Row]] = [
        .pipeline: [
            // The model and the actions: the gateway, on behalf of the API's callers.
            row(Slipway_Pipeline_V1_Pipeline.CreateOrganization.self, .gateway),
            row(Slipway_Pipeline_V1_Pipeline.ListOrganizations.self, .gateway),
            row(Slipway_Pipeline_V1_Pipeline.GetOrganizationQuotas.self, .gateway),
            // The operator's alone (every method is), never the gateway's: an organization admin
            // must not raise its own quotas.
            row(Slipway_Pipeline_V1_Pipeline.SetOrganizationQuotas.self),
            row(Slipway_Pipeline_V1_Pipeline.CreateProject.self, .gateway),
            row(Slipway_Pipeline_V1_Pipeline.ListProjects.self, .gateway),
            row(Slipway_Pipeline_V1_Pipeline.CreateEnvironment.self, .gateway),
            row(Slipway_Pipeline_V1_Pipeline.ListEnvironments.self, .gateway),
            row(Slipway_Pipeline_V1_Pipeline.CreateService.self, .gateway),
            row(Slipway_Pipeline_V1_Pipeline.UpdateService.self, .gateway),
            row(Slipway_Pipeline_V1_Pipeline.GetService.self, .gateway),
            row(Slipway_Pipeline_V1_Pipeline.ListServices.self, .gateway),
            row(Slipway_Pipeline_V1_Pipeline.Deploy.self, .gateway),
            row(Slipway_Pipeline_V1_Pipeline.Redeploy.self, .gateway),
            row(Slipway_Pipeline_V1_Pipeline.Restart.self, .gateway),
            row(Slipway_Pipeline_V1_Pipeline.Stop.self, .gateway),
            row(Slipway_Pipeline_V1_Pipeline.Delete.self, .gateway),
            row(Slipway_Pipeline_V1_Pipeline.Rollback.self, .gateway),
            row(Slipway_Pipeline_V1_Pipeline.Cancel.self, .gateway),
            row(Slipway_Pipeline_V1_Pipeline.GetDeployment.self, .gateway),
            row(Slipway_Pipeline_V1_Pipeline.ListDeployments.self, .gateway),
            row(Slipway_Pipeline_V1_Pipeline.ListReleases.self, .gateway),
            row(Slipway_Pipeline_V1_Pipeline.GetEnvironmentStatus.self, .gateway),
            row(Slipway_Pipeline_V1_Pipeline.Watch.self, .gateway),
        ],
        .builder: [
            row(Slipway_Builder_V1_Builder.Build.self, .pipeline),
            row(Slipway_Builder_V1_Builder.Mirror.self, .pipeline),
            row(Slipway_Builder_V1_Builder.Cancel.self, .pipeline),
            row(Slipway_Builder_V1_Builder.ResolveCommit.self, .pipeline),
        ],
        .network: [
            row(Slipway_Network_V1_Network.SetRoute.self, .pipeline),
            row(Slipway_Network_V1_Network.DeleteRoute.self, .pipeline),
            row(Slipway_Network_V1_Network.GetRoute.self, .pipeline, .gateway),
            row(Slipway_Network_V1_Network.ListRoutes.self, .pipeline, .gateway),
            row(Slipway_Network_V1_Network.CheckDomains.self, .pipeline, .gateway),
            row(Slipway_Network_V1_Network.GetLoadBalancer.self, .pipeline, .gateway),
            // Traffic to new instances: the cluster's rollout.
            row(Slipway_Network_V1_Network.SetBackends.self, .cluster),
            // Certificates and ACME challenges: the certs service.
            row(Slipway_Network_V1_Network.InstallCertificate.self, .certs),
            row(Slipway_Network_V1_Network.PresentChallenge.self, .certs),
            row(Slipway_Network_V1_Network.CleanUpChallenge.self, .certs),
        ],
        .cluster: [
            row(Slipway_Cluster_V1_Cluster.Deploy.self, .pipeline),
            row(Slipway_Cluster_V1_Cluster.Stop.self, .pipeline),
            row(Slipway_Cluster_V1_Cluster.Delete.self, .pipeline),
            row(Slipway_Cluster_V1_Cluster.ListInstances.self, .pipeline),
            row(Slipway_Cluster_V1_Cluster.Watch.self, .pipeline),
        ],
        .certs: [
            row(Slipway_Certs_V1_Certs.Issue.self, .pipeline, .gateway),
            row(Slipway_Certs_V1_Certs.GetCertificate.self, .pipeline, .gateway),
            row(Slipway_Certs_V1_Certs.ListCertificates.self, .pipeline, .gateway),
            row(Slipway_Certs_V1_Certs.Renew.self, .pipeline, .gateway),
            row(Slipway_Certs_V1_Certs.Revoke.self, .pipeline, .gateway),
            row(Slipway_Certs_V1_Certs.GetLocalCA.self, .pipeline, .gateway),
            // Private keys leave slipway-certs only for the two services that serve TLS themselves.
            row(Slipway_Certs_V1_Certs.GetKeyPair.self, .gateway, .network),
        ],
        .logs: [
            // Writers: whoever produces deployment or application output.
            row(Slipway_Logs_V1_Logs.Append.self, .pipeline, .builder, .cluster),
            // Readers: the gateway for the API's callers; the cluster re-reads application logs.
            row(Slipway_Logs_V1_Logs.Tail.self, .gateway),
            row(Slipway_Logs_V1_Logs.Query.self, .gateway, .cluster),
            row(Slipway_Logs_V1_Logs.ListStreams.self, .gateway),
        ],
    ]

    /// The policy `service`'s server applies over the methods it registered.
    public static func policy(for service: ServiceName, methods: [String]) -> AccessPolicy {
        var policy = AccessPolicy()
        for path in methods { policy.allow([PlatformIdentity.operator.uri], path) }
        for row in rows[service] ?? [] { policy.allow(row.callers.map { PlatformIdentity($0).uri }, row.path) }
        for path in anyPlatformIdentity where methods.contains(path) { policy.allowAnyCaller(path) }
        return policy
    }

    /// The table as docs/access.md has it.
    public static func markdown() -> String {
        var text = """
            # Who may call what

            Every internal service (all but the gateway's public port) takes only mutual-TLS connections from
            holders of a platform certificate (`spiffe://slipway/<name>`, issued by the platform CA), and checks
            each call against this table before any handler runs. Outside its row a caller gets
            `PERMISSION_DENIED` naming its identity and the method. Generated from
            `Sources/SlipwayServiceKit/Trust/AccessTable.swift` by `slipway pki access`; a test keeps this file equal to it.

            - **operator** (`spiffe://slipway/operator`, `slipway pki issue operator`) may call every method of every service.
            - **Any platform identity** may call: \(anyPlatformIdentity.map { "`\($0)`" }.joined(separator: ", ")).
            - A method without a row is for the operator only.


            """
        for service in ServiceName.allCases {
            guard let rows = rows[service] else { continue }
            text += "## slipway-\(service.rawValue)\n\n| method | callers |\n|---|---|\n"
            for row in rows {
                text += "| `\(row.path)` | \(row.callers.isEmpty ? "(operator only)" : row.callers.map(\.rawValue).joined(separator: ", ")) |\n"
            }
            text += "\n"
        }
        return text
    }
}
