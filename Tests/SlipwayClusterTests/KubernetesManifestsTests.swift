import Foundation
import SlipwayProcess
import SlipwayTestSupport
import Testing

@testable import SlipwayCluster

/// The Kubernetes driver's manifests, validated against Kubernetes' published schemas by
/// `kubernetes-validate --strict` (PyPI; the schemas ship with it, no API server is needed).
@Suite struct KubernetesManifestsTests {

    static func input() -> KubernetesManifests.Input {
        var input = KubernetesManifests.Input(
            workload: .init(environmentID: "env_4f2a9c", serviceID: "svc_81be", serviceName: "web"), environmentName: "prod", image: "127.0.0.1:5000/env_4f2a9c/web@sha256:0123")
        input.version = "3f9a383c30f2626332d8565d9bc7a16e74c5ae37"
        input.variables = ["MODE": "production"]
        input.secrets = ["DATABASE_PASSWORD": "hunter2"]
        input.replicas = 3
        input.readiness = .http(path: "/health")
        input.liveness = .tcp
        input.maxSurge = "1"
        return input
    }

    /// The objects checked by `kubernetes-validate --strict` against the published schemas.
    static func validate(_ objects: [[String: Any]]) async throws -> (Bool, String) {
        try await KubernetesSchemas.validate(objects, encode: { try KubernetesManifests.json($0) })
    }

    @Test func environmentsAreIsolatedAndPodsHardened() async throws {
        var input = Self.input()
        input.runAsNonRoot = true
        let objects = KubernetesManifests.all(input)
        let (valid, output) = try await Self.validate(objects)
        #expect(valid, "\(output)")
        let kinds = objects.compactMap { $0["kind"] as? String }
        #expect(kinds.starts(with: ["Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange"]), "\(kinds)")
        // In: only the environment's own pods and the ingress controller; out: anything but the platform.
        let policy = try #require(objects.first { $0["kind"] as? String == "NetworkPolicy" }?["spec"] as? [String: Any])
        #expect(policy["policyTypes"] as? [String] == ["Ingress", "Egress"])
        let from = try #require((policy["ingress"] as? [[String: Any]])?.first?["from"] as? [[String: Any]])
        #expect(from.count == 2 && (from[1]["namespaceSelector"] as? [String: Any])?["matchLabels"] as? [String: String] == ["kubernetes.io/metadata.name": "ingress-nginx"])
        let to = try #require((policy["egress"] as? [[String: Any]])?.first?["to"] as? [[String: Any]])
        let notIn = (to[0]["namespaceSelector"] as? [String: Any])?["matchExpressions"] as? [[String: AnyHashable]]
        #expect(notIn == [["key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["slipway"]]])
        #expect((to[1]["ipBlock"] as? [String: AnyHashable]) == ["cidr": "0.0.0.0/0", "except": ["169.254.0.0/16"]])
        let quota = try #require((objects.first { $0["kind"] as? String == "ResourceQuota" }?["spec"] as? [String: Any])?["hard"] as? [String: String])
        #expect(quota["pods"] == "100" && quota["limits.memory"] == "32768Mi")
        // The pod: RuntimeDefault seccomp, no token; the container: no escalation, no capabilities, not root.
        let pod = try #require(((KubernetesManifests.deployment(input)["spec"] as? [String: Any])?["template"] as? [String: Any])?["spec"] as? [String: Any])
        #expect((pod["securityContext"] as? [String: [String: String]]) == ["seccompProfile": ["type": "RuntimeDefault"]])
        #expect(pod["automountServiceAccountToken"] as? Bool == false)
        let security = try #require((pod["containers"] as? [[String: Any]])?.first?["securityContext"] as? [String: Any])
        #expect(security["allowPrivilegeEscalation"] as? Bool == false && security["runAsNonRoot"] as? Bool == true)
        #expect((security["capabilities"] as? [String: [String]]) == ["drop": ["ALL"]])
        // An image that needs root is not told to run as non-root.
        let rootPod = ((KubernetesManifests.deployment(Self.input())["spec"] as? [String: Any])?["template"] as? [String: Any])?["spec"] as? [String: Any]
        #expect(((rootPod?["containers"] as? [[String: Any]])?.first?["securityContext"] as? [String: Any])?["runAsNonRoot"] == nil)
    }

    @Test func everyObjectValidatesAgainstTheKubernetesSchemas() async throws {
        let (valid, output) = try await Self.validate(KubernetesManifests.all(Self.input()))
        #expect(valid, "\(output)")
        // gRPC and exec probes too.
        var probes = Self.input()
        probes.readiness = .grpc(service: "shop.Cart")
        probes.liveness = .exec(command: ["/bin/check", "--quick"])
        probes.recreate = true
        let withProbes = KubernetesManifests.deployment(probes)
        let (probesValid, probesOutput) = try await Self.validate([withProbes])
        #expect(probesValid, "\(probesOutput)")
        let container = try #require(((((withProbes["spec"] as? [String: Any])?["template"] as? [String: Any])?["spec"] as? [String: Any])?["containers"] as? [[String: Any]])?.first)
        #expect((container["readinessProbe"] as? [String: Any])?["grpc"] as? [String: AnyHashable] == ["port": 8080, "service": "shop.Cart"])
        #expect(((container["livenessProbe"] as? [String: Any])?["exec"] as? [String: [String]]) == ["command": ["/bin/check", "--quick"]])
        #expect(((withProbes["spec"] as? [String: Any])?["strategy"] as? [String: String]) == ["type": "Recreate"])
        // With the platform registry's credentials: the namespace's pull Secret, named by the pods.
        var pulling = Self.input()
        pulling.pullCredentials = Data(#"{"auths":{"registry.example.com":{"auth":"c2xpcHdheTpzZWNyZXQ="}}}"#.utf8)
        let pullObjects = KubernetesManifests.all(pulling)
        let (pullValid, pullOutput) = try await Self.validate(pullObjects)
        #expect(pullValid, "\(pullOutput)")
        let pullSecret = try #require(pullObjects.first { ($0["type"] as? String) == "kubernetes.io/dockerconfigjson" })
        #expect(((pullSecret["metadata"] as? [String: Any])?["name"] as? String) == KubernetesManifests.pullSecretName)
        #expect((pullSecret["data"] as? [String: String])?[".dockerconfigjson"] == pulling.pullCredentials!.base64EncodedString())
        let pullingSpec = (((KubernetesManifests.deployment(pulling)["spec"] as? [String: Any])?["template"] as? [String: Any])?["spec"] as? [String: Any])
        #expect((pullingSpec?["imagePullSecrets"] as? [[String: String]]) == [["name": "slipway-registry"]])
        #expect(KubernetesManifests.all(Self.input()).allSatisfy { ($0["type"] as? String) != "kubernetes.io/dockerconfigjson" })
        // The validator is really looking: a field Kubernetes does not know is refused.
        var deployment = KubernetesManifests.deployment(Self.input())
        var spec = deployment["spec"] as! [String: Any]
        spec["replicaz"] = 3
        deployment["spec"] = spec
        let (refused, message) = try await Self.validate([deployment])
        #expect(!refused && message.contains("replicaz"), "\(message)")
    }

    @Test func labelsSelectorsAndSecretsAreWhereKubernetesExpectsThem() throws {
        let input = Self.input()
        let deployment = KubernetesManifests.deployment(input)
        let spec = try #require(deployment["spec"] as? [String: Any])
        let selector = try #require((spec["selector"] as? [String: Any])?["matchLabels"] as? [String: String])
        let template = try #require(spec["template"] as? [String: Any])
        let podLabels = try #require((template["metadata"] as? [String: Any])?["labels"] as? [String: String])
        // The selector matches the pods, and does not include the version (it must survive rollouts).
        #expect(selector.allSatisfy { podLabels[$0.key] == $0.value })
        #expect(selector["app.kubernetes.io/version"] == nil)
        #expect(podLabels["app.kubernetes.io/version"] == input.version)
        #expect(podLabels["app.kubernetes.io/managed-by"] == "slipway")
        let service = KubernetesManifests.service(input)
        #expect((service["spec"] as? [String: Any])?["selector"] as? [String: String] == selector)
        // Namespaced per environment, as a DNS label.
        #expect(KubernetesManifests.namespace(for: "env_4f2a9c") == "slipway-env-4f2a9c")
        #expect((deployment["metadata"] as? [String: Any])?["namespace"] as? String == "slipway-env-4f2a9c")
        // Secrets only in the Secret, base64; variables only in the ConfigMap.
        let secretData = try #require(KubernetesManifests.secret(input)["data"] as? [String: String])
        #expect(secretData == ["DATABASE_PASSWORD": Data("hunter2".utf8).base64EncodedString()])
        let configText = String(decoding: try KubernetesManifests.json(KubernetesManifests.configMap(input)), as: UTF8.self)
        #expect(!configText.contains("hunter2") && configText.contains("production"))
        let deploymentText = String(decoding: try KubernetesManifests.json(deployment), as: UTF8.self)
        #expect(!deploymentText.contains("hunter2"))
    }
}
