import Foundation

/// The Kubernetes driver's objects for one workload: a namespace per environment, and per service a
/// ConfigMap (variables), a Secret (secrets), a Deployment (rolling update, probes, resources) and a
/// Service, labelled with the Kubernetes recommended labels (`app.kubernetes.io/*`). Plain JSON
/// objects (JSON is YAML): what server-side apply sends. Validated in the tests against Kubernetes'
/// published schemas with `kubernetes-validate --strict`.
public enum KubernetesManifests {
    public enum Probe: Sendable, Equatable {
        case http(path: String)
        case tcp
        /// grpc.health.v1 on the port (Kubernetes' gRPC probe).
        case grpc(service: String)
        case exec(command: [String])
    }

    public struct Input: Sendable {
        public var workload: Workload
        /// The environment's name, for the namespace's labels.
        public var environmentName: String
        public var image: String
        /// The version deployed (a commit or tag), for the version label; cut to 63 characters.
        public var version: String = ""
        public var port = 8080
        public var variables: [String: String] = [:]
        public var secrets: [String: String] = [:]
        public var replicas = 1
        public var cpuMillicores = 500
        public var memoryMiB = 512
        public var readiness: Probe? = .tcp
        public var liveness: Probe?
        public var periodSeconds = 10
        public var failureThreshold = 3
        public var initialDelaySeconds = 0
        public var timeoutSeconds = 1
        /// Rolling update: extra pods during a rollout, pods that may be unavailable.
        public var maxSurge = "25%"
        /// Every old pod goes before a new one starts (the Recreate strategy) instead of a rolling update.
        public var recreate = false
        public var maxUnavailable = "0"
        /// Credentials for the platform registry (a `.dockerconfigjson`, the containers-auth.json
        /// `slipway up` writes): the namespace's pull Secret, named by the pods. nil: anonymous pulls.
        public var pullCredentials: Data?
        /// The platform's namespace: the environment's pods may not open connections into it.
        public var platformNamespace = "slipway"
        /// The ingress controller's namespace: the only one besides the environment's own from
        /// which its pods accept connections.
        public var ingressNamespace = "ingress-nginx"
        /// The cluster's pod and service networks (CIDRs): kept out of the egress rule's "anywhere"
        /// (many network plugins match pod addresses against ipBlock, which would let the pods
        /// reach the platform's by address).
        public var internalNetworks: [String] = []
        /// The image runs as a user other than root: Kubernetes refuses to start it as root.
        public var runAsNonRoot = false
        /// The environment's ResourceQuota: pods, and CPU (millicores) and memory (MiB) limits summed.
        public var quotaPods = 100
        public var quotaCPUMillicores = 16_000
        public var quotaMemoryMiB = 32_768

        public init(workload: Workload, environmentName: String, image: String) {
            self.workload = workload
            self.environmentName = environmentName
            self.image = image
        }
    }

    /// `slipway-<environment id>` as a DNS label.
    public static func namespace(for environmentID: String) -> String {
        let cleaned = environmentID.lowercased().map { $0.isLetter || $0.isNumber ? $0 : "-" }
        return String(("slipway-" + String(cleaned)).prefix(63)).trimmingCharacters(in: CharacterSet(charactersIn: "-"))
    }

    /// A label value: at most 63 of [A-Za-z0-9-_.], starting and ending with an alphanumeric.
    static func labelValue(_ text: String) -> String {
        let kept = String(text.filter { $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) }.prefix(63))
        return kept.trimmingCharacters(in: CharacterSet(charactersIn: "-_."))
    }

    static func labels(_ input: Input) -> [String: String] {
        var labels = [
            "app.kubernetes.io/name": input.workload.serviceName,
            "app.kubernetes.io/instance": labelValue("\(input.workload.serviceName)-\(input.workload.environmentID)"),
            "app.kubernetes.io/component": "service",
            "app.kubernetes.io/part-of": labelValue(input.environmentName),
            "app.kubernetes.io/managed-by": "slipway",
        ]
        let version = labelValue(input.version)
        if !version.isEmpty { labels["app.kubernetes.io/version"] = version }
        return labels
    }

    /// What the Deployment's selector matches (stable across versions).
    static func selector(_ input: Input) -> [String: String] {
        ["app.kubernetes.io/name": input.workload.serviceName, "app.kubernetes.io/instance": labelValue("\(input.workload.serviceName)-\(input.workload.environmentID)")]
    }

    static func metadata(_ input: Input, name: String) -> [String: Any] {
        ["name": name, "namespace": namespace(for: input.workload.environmentID), "labels": labels(input)]
    }

    public static func namespaceObject(_ input: Input) -> [String: Any] {
        [
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": [
                "name": namespace(for: input.workload.environmentID),
                "labels": ["app.kubernetes.io/managed-by": "slipway", "app.kubernetes.io/part-of": labelValue(input.environmentName)],
            ],
        ]
    }

    /// The environment's own objects (NetworkPolicy, ResourceQuota, LimitRange), shared by its services.
    public static let environmentObjectName = "slipway-environment"

    /// Who may talk to the environment's pods, and to whom they may talk: connections in only from
    /// the environment's own pods and the ingress controller; out to anything but the platform's
    /// namespace (other namespaces, DNS, the outside).
    public static func networkPolicy(_ input: Input) -> [String: Any] {
        [
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": ["name": environmentObjectName, "namespace": namespace(for: input.workload.environmentID), "labels": ["app.kubernetes.io/managed-by": "slipway"]],
            "spec": [
                "podSelector": [String: Any](),
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [[
                    "from": [
                        ["podSelector": [String: Any]()],
                        ["namespaceSelector": ["matchLabels": ["kubernetes.io/metadata.name": input.ingressNamespace]]],
                    ],
                ]],
                "egress": [[
                    "to": [
                        ["namespaceSelector": ["matchExpressions": [["key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": [input.platformNamespace]]]]],
                        ["ipBlock": ["cidr": "0.0.0.0/0", "except": ["169.254.0.0/16"] + input.internalNetworks]],
                    ],
                ]],
            ],
        ]
    }

    /// What the whole environment may use.
    public static func resourceQuota(_ input: Input) -> [String: Any] {
        [
            "apiVersion": "v1", "kind": "ResourceQuota",
            "metadata": ["name": environmentObjectName, "namespace": namespace(for: input.workload.environmentID), "labels": ["app.kubernetes.io/managed-by": "slipway"]],
            "spec": ["hard": [
                "pods": String(input.quotaPods),
                "limits.cpu": "\(input.quotaCPUMillicores)m", "requests.cpu": "\(input.quotaCPUMillicores)m",
                "limits.memory": "\(input.quotaMemoryMiB)Mi", "requests.memory": "\(input.quotaMemoryMiB)Mi",
            ]],
        ]
    }

    /// Defaults and bounds for a container that names no resources of its own.
    public static func limitRange(_ input: Input) -> [String: Any] {
        [
            "apiVersion": "v1", "kind": "LimitRange",
            "metadata": ["name": environmentObjectName, "namespace": namespace(for: input.workload.environmentID), "labels": ["app.kubernetes.io/managed-by": "slipway"]],
            "spec": ["limits": [[
                "type": "Container",
                "default": ["cpu": "500m", "memory": "512Mi"],
                "defaultRequest": ["cpu": "100m", "memory": "128Mi"],
                "max": ["cpu": "\(input.quotaCPUMillicores)m", "memory": "\(input.quotaMemoryMiB)Mi"],
            ]]],
        ]
    }

    /// The environment namespace's pull Secret (shared by its services; a service's delete leaves it).
    public static let pullSecretName = "slipway-registry"

    public static func pullSecret(_ input: Input) -> [String: Any]? {
        guard let credentials = input.pullCredentials else { return nil }
        return [
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
            "metadata": [
                "name": pullSecretName, "namespace": namespace(for: input.workload.environmentID),
                "labels": ["app.kubernetes.io/managed-by": "slipway"],
            ],
            "data": [".dockerconfigjson": credentials.base64EncodedString()],
        ]
    }

    public static func configMap(_ input: Input) -> [String: Any] {
        ["apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata(input, name: "\(input.workload.serviceName)-config"), "data": input.variables]
    }

    public static func secret(_ input: Input) -> [String: Any] {
        [
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": metadata(input, name: "\(input.workload.serviceName)-secrets"),
            "data": input.secrets.mapValues { Data($0.utf8).base64EncodedString() },
        ]
    }

    static func probe(_ probe: Probe, _ input: Input) -> [String: Any] {
        var object: [String: Any] = [
            "periodSeconds": input.periodSeconds, "failureThreshold": input.failureThreshold,
            "initialDelaySeconds": input.initialDelaySeconds, "timeoutSeconds": input.timeoutSeconds,
        ]
        switch probe {
        case .http(let path): object["httpGet"] = ["path": path, "port": input.port]
        case .tcp: object["tcpSocket"] = ["port": input.port]
        case .grpc(let service): object["grpc"] = service.isEmpty ? ["port": input.port] : ["port": input.port, "service": service]
        case .exec(let command): object["exec"] = ["command": command]
        }
        return object
    }

    public static func deployment(_ input: Input) -> [String: Any] {
        var container: [String: Any] = [
            "name": input.workload.serviceName,
            "image": input.image,
            "ports": [["name": "http", "containerPort": input.port, "protocol": "TCP"]],
            "env": [["name": "PORT", "value": String(input.port)]],
            "envFrom": [
                ["configMapRef": ["name": "\(input.workload.serviceName)-config"]],
                ["secretRef": ["name": "\(input.workload.serviceName)-secrets"]],
            ],
            "resources": [
                "requests": ["cpu": "\(input.cpuMillicores)m", "memory": "\(input.memoryMiB)Mi"],
                "limits": ["cpu": "\(input.cpuMillicores)m", "memory": "\(input.memoryMiB)Mi"],
            ],
        ]
        if let readiness = input.readiness { container["readinessProbe"] = probe(readiness, input) }
        if let liveness = input.liveness { container["livenessProbe"] = probe(liveness, input) }
        var security: [String: Any] = ["allowPrivilegeEscalation": false, "capabilities": ["drop": ["ALL"]]]
        if input.runAsNonRoot { security["runAsNonRoot"] = true }
        container["securityContext"] = security
        var podSpec: [String: Any] = [
            "containers": [container], "terminationGracePeriodSeconds": 30,
            "securityContext": ["seccompProfile": ["type": "RuntimeDefault"]],
            // No API credentials in an app's pods.
            "automountServiceAccountToken": false,
        ]
        if input.pullCredentials != nil { podSpec["imagePullSecrets"] = [["name": pullSecretName]] }
        let strategy: [String: Any] = input.recreate
            ? ["type": "Recreate"]
            : ["type": "RollingUpdate", "rollingUpdate": ["maxSurge": intOrString(input.maxSurge), "maxUnavailable": intOrString(input.maxUnavailable)]]
        return [
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": metadata(input, name: input.workload.serviceName),
            "spec": [
                "replicas": input.replicas,
                "selector": ["matchLabels": selector(input)],
                "strategy": strategy,
                "template": [
                    "metadata": ["labels": labels(input)],
                    "spec": podSpec,
                ],
            ],
        ]
    }

    public static func service(_ input: Input) -> [String: Any] {
        [
            "apiVersion": "v1", "kind": "Service",
            "metadata": metadata(input, name: input.workload.serviceName),
            "spec": [
                "type": "ClusterIP",
                "selector": selector(input),
                "ports": [["name": "http", "port": input.port, "targetPort": "http", "protocol": "TCP"]],
            ],
        ]
    }

    /// Every object, in the order they are applied.
    public static func all(_ input: Input) -> [[String: Any]] {
        [namespaceObject(input), networkPolicy(input), resourceQuota(input), limitRange(input)] + (pullSecret(input).map { [$0] } ?? [])
            + [configMap(input), secret(input), deployment(input), service(input)]
    }

    public static func json(_ object: [String: Any]) throws -> Data {
        try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .prettyPrinted])
    }

    /// "25%" stays a string, "1" becomes the number Kubernetes' int-or-string expects.
    static func intOrString(_ text: String) -> Any {
        Int(text).map { $0 as Any } ?? text
    }
}
