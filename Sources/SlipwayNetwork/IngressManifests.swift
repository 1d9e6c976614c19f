import Crypto
import Foundation

/// The network service's Kubernetes mode: a route becomes a `networking.k8s.io/v1` Ingress for
/// ingress-nginx in its environment's namespace, and each certificate a `kubernetes.io/tls` Secret
/// beside it. Plain JSON objects (JSON is YAML), as the cluster's ``KubernetesManifests`` are; what
/// server-side apply sends. Validated in the tests with `kubernetes-validate --strict`.
///
/// The same semantics as local mode (``NginxConfig``): the default domain
/// `<domain label>.<base domain>` and the custom domains the caller routes (as local mode: those
/// verified, ``NetworkState/routedCustomDomains(of:unverified:)``), the path prefix matched by whole
/// segments (`pathType: Prefix`, like nginx's `location = /a` plus `location /a/`), HTTP answered
/// directly until a certificate covers the host and redirected to HTTPS (308) after, and the same
/// request body limit.
///
/// ```swift
/// let routed = state.routedCustomDomains(of: route)   // verified ones only
/// let ingress = IngressManifests.ingress(route, baseDomain: "apps.example.com", customDomains: routed, certificates: state.certificates)
/// for certificate in IngressManifests.certificatesUsed(by: route, baseDomain: "apps.example.com", customDomains: routed,
///                                                      among: state.certificates) {
///     let secret = IngressManifests.tlsSecret(certificate, chainPEM: chain, keyPEM: key,
///                                             environmentID: route.environmentID, environmentName: route.environmentName)
/// }
/// ```
public enum IngressManifests {
    /// Name of the port on the cluster's Service the Ingress sends to. The cluster's Service
    /// (`KubernetesManifests.service`) exposes exactly one port, named `http`, whatever its number;
    /// referring to it by name keeps the Ingress right when the number changes. Must match the cluster's.
    public static let servicePortName = "http"

    /// The request body limit, as local mode's `NginxConfig.Settings.maxBodyMiB` default.
    public static let defaultMaxBodyMiB = 100

    /// `slipway-<environment id>` as a DNS label. Must match the cluster's `KubernetesManifests.namespace(for:)`
    /// (SlipwayNetwork cannot import SlipwayCluster): an Ingress only reaches Services and Secrets in its own namespace.
    public static func namespace(for environmentID: String) -> String {
        let cleaned = environmentID.lowercased().map { $0.isLetter || $0.isNumber ? $0 : "-" }
        return String(("slipway-" + String(cleaned)).prefix(63)).trimmingCharacters(in: CharacterSet(charactersIn: "-"))
    }

    /// The cluster's Service for the route's service. The cluster names the Service (and the
    /// Deployment) after the service, without a hash; `LoadBalancer` holds `serviceName` to a DNS label,
    /// so it is a valid object name as it is. Must match `KubernetesManifests.service`.
    public static func serviceName(_ route: NetworkState.Route) -> String { route.serviceName }

    /// The Ingress's name: the Service's, so `kubectl get deploy,svc,ingress web` lines up. One Service
    /// per service name in a namespace means one Ingress too.
    public static func ingressName(_ route: NetworkState.Route) -> String { route.serviceName }

    /// The hosts the route answers, default domain first, each once: its default domain and
    /// `customDomains` (the route's custom domains that are routed; a custom domain not yet verified
    /// must not reach an Ingress, or whoever saves a name first would take its traffic).
    public static func hosts(_ route: NetworkState.Route, baseDomain: String, customDomains: [String]) -> [String] {
        var seen = Set<String>()
        let own = Set(route.customDomains)
        return ([route.defaultDomain(base: baseDomain)] + customDomains.filter(own.contains)).filter { seen.insert($0).inserted }
    }

    /// The certificate served for `host`: the one covering it that expires last, as in local mode.
    public static func certificate(for host: String, among certificates: [NetworkState.Certificate]) -> NetworkState.Certificate? {
        var state = NetworkState()
        state.certificates = certificates
        return state.certificate(for: host)
    }

    /// The certificates the route's Ingress refers to, one per Secret name, by name: their Secrets
    /// must exist in the route's namespace (an Ingress cannot refer to another namespace's Secret, so
    /// a certificate used in several environments is stored once in each).
    public static func certificatesUsed(
        by route: NetworkState.Route, baseDomain: String, customDomains: [String], among certificates: [NetworkState.Certificate]
    ) -> [NetworkState.Certificate] {
        var byName: [String: NetworkState.Certificate] = [:]
        for host in hosts(route, baseDomain: baseDomain, customDomains: customDomains) {
            if let certificate = certificate(for: host, among: certificates) { byName[tlsSecretName(certificate)] = certificate }
        }
        return byName.keys.sorted().map { byName[$0]! }
    }

    /// The route as an Ingress for ingress-nginx: one rule per host, the route's prefix on each, the
    /// cluster's Service behind it, and a `tls` entry per Secret listing the hosts it serves.
    public static func ingress(
        _ route: NetworkState.Route, baseDomain: String, customDomains: [String], certificates: [NetworkState.Certificate],
        ingressClassName: String = "nginx", maxBodyMiB: Int = defaultMaxBodyMiB
    ) -> [String: Any] {
        let hosts = hosts(route, baseDomain: baseDomain, customDomains: customDomains)
        let backend: [String: Any] = ["service": ["name": serviceName(route), "port": ["name": servicePortName]]]
        let rules: [[String: Any]] = hosts.map { host in
            ["host": host, "http": ["paths": [["path": route.pathPrefix, "pathType": "Prefix", "backend": backend]]]]
        }
        var hostsBySecret: [String: [String]] = [:]
        for host in hosts {
            if let certificate = certificate(for: host, among: certificates) { hostsBySecret[tlsSecretName(certificate), default: []].append(host) }
        }
        let tls: [[String: Any]] = hostsBySecret.keys.sorted().map { ["hosts": hostsBySecret[$0]!, "secretName": $0] }

        var annotations = [
            "nginx.ingress.kubernetes.io/proxy-body-size": "\(maxBodyMiB)m",
            // ingress-nginx's GRPC is `grpc_pass grpc://`: HTTP/2 without TLS to the backend, which is
            // also what an h2c (.http2) upstream speaks, as local mode's grpc_pass for both.
            "nginx.ingress.kubernetes.io/backend-protocol": route.upstream == .http ? "HTTP" : "GRPC",
        ]
        if !tls.isEmpty {
            // Applies only to hosts ingress-nginx has a certificate for: the others in this Ingress
            // stay on plain HTTP, as in local mode. ACME HTTP-01 challenges are not redirected (the
            // controller's `no-tls-redirect-locations` defaults to /.well-known/acme-challenge).
            annotations["nginx.ingress.kubernetes.io/ssl-redirect"] = "true"
        }
        var spec: [String: Any] = ["ingressClassName": ingressClassName, "rules": rules]
        if !tls.isEmpty { spec["tls"] = tls }
        return [
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": [
                "name": ingressName(route), "namespace": namespace(for: route.environmentID),
                "labels": labels(route), "annotations": annotations,
            ] as [String: Any],
            "spec": spec,
        ]
    }

    /// The Secret's name for a certificate: `tls-<first domain>-<hash of the domain set>`, a DNS label.
    ///
    /// From the names it covers, not from its id: the id is the chain's hash and changes at every
    /// renewal, while the name must not, so that a renewal replaces the Secret's data in place.
    public static func tlsSecretName(_ certificate: NetworkState.Certificate) -> String {
        let domains = Set(certificate.domains.map { $0.lowercased() }).sorted()
        let hash = shortHash(domains.joined(separator: "\n"))
        let first = (domains.first ?? "none").replacingOccurrences(of: "*.", with: "wildcard.")
        let readable = String(first.map { $0.isASCII && ($0.isLetter || $0.isNumber) ? $0 : "-" })
        let kept = String(readable.prefix(63 - "tls-".count - 1 - hash.count)).trimmingCharacters(in: CharacterSet(charactersIn: "-"))
        return "tls-\(kept)-\(hash)"
    }

    /// A certificate as a `kubernetes.io/tls` Secret in the environment's namespace: `tls.crt` the PEM
    /// chain (leaf first), `tls.key` the PEM private key.
    ///
    /// In Kubernetes mode the certs service stores certificates as these Secrets. The name depends on
    /// the domains only (``tlsSecretName(_:)``), so a renewed certificate replaces the data of the
    /// Secret the Ingress already names: ingress-nginx watches the Secrets its Ingresses refer to and
    /// swaps the certificate without a reload or a changed Ingress, which is what makes rotation
    /// seamless. The `slipway/certificate-id` annotation says which certificate the data is.
    public static func tlsSecret(
        _ certificate: NetworkState.Certificate, chainPEM: String, keyPEM: String, environmentID: String, environmentName: String
    ) -> [String: Any] {
        let name = tlsSecretName(certificate)
        return [
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": [
                "name": name, "namespace": namespace(for: environmentID),
                "labels": [
                    "app.kubernetes.io/name": "certificate",
                    "app.kubernetes.io/instance": name,
                    "app.kubernetes.io/component": "tls",
                    "app.kubernetes.io/part-of": labelValue(environmentName),
                    "app.kubernetes.io/managed-by": "slipway",
                ],
                "annotations": [
                    "slipway/certificate-id": certificate.id,
                    "slipway/domains": Set(certificate.domains.map { $0.lowercased() }).sorted().joined(separator: ","),
                ],
            ] as [String: Any],
            "data": [
                "tls.crt": Data(chainPEM.utf8).base64EncodedString(),
                "tls.key": Data(keyPEM.utf8).base64EncodedString(),
            ],
        ]
    }

    public static func json(_ object: [String: Any]) throws -> Data {
        try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .prettyPrinted])
    }

    /// The cluster's recommended labels for the service's objects (`KubernetesManifests.labels`, which
    /// must stay the same), without the version the network does not know, and component `ingress`:
    /// `app.kubernetes.io/instance` selects the service's Deployment, Service and Ingress together,
    /// while the component tells the Ingress apart from what the cluster applies.
    static func labels(_ route: NetworkState.Route) -> [String: String] {
        [
            "app.kubernetes.io/name": route.serviceName,
            "app.kubernetes.io/instance": labelValue("\(route.serviceName)-\(route.environmentID)"),
            "app.kubernetes.io/component": "ingress",
            "app.kubernetes.io/part-of": labelValue(route.environmentName),
            "app.kubernetes.io/managed-by": "slipway",
        ]
    }

    /// A label value: at most 63 of [A-Za-z0-9-_.], starting and ending with an alphanumeric.
    /// Must match the cluster's `KubernetesManifests.labelValue`.
    static func labelValue(_ text: String) -> String {
        let kept = String(text.filter { $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) }.prefix(63))
        return kept.trimmingCharacters(in: CharacterSet(charactersIn: "-_."))
    }

    /// 12 hex digits of SHA-256: enough to keep distinct domain sets apart in one namespace.
    static func shortHash(_ text: String) -> String {
        SHA256.hash(data: Data(text.utf8)).prefix(6).map { String(format: "%02x", $0) }.joined()
    }
}
