import Foundation

/// An image reference split into registry host, repository and tag or digest.
public struct ImageReference: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    public var repository: String
    public var tag: String?
    public var digest: String?

    /// Parses `[host[:port]/]name[:tag][@sha256:...]`; a name without a host is Docker Hub's.
    public init?(parsing text: String) {
        var rest = Substring(text)
        guard !rest.isEmpty, !rest.contains(" ") else { return nil }
        if let at = rest.firstIndex(of: "@") {
            digest = String(rest[rest.index(after: at)...])
            rest = rest[..<at]
            guard digest!.hasPrefix("sha256:"), digest!.count == 71 else { return nil }
        }
        let firstSlash = rest.firstIndex(of: "/")
        if let firstSlash, rest[..<firstSlash].contains(where: { $0 == "." || $0 == ":" }) || rest[..<firstSlash] == "localhost" {
            host = String(rest[..<firstSlash])
            rest = rest[rest.index(after: firstSlash)...]
        } else {
            host = "docker.io"
            if firstSlash == nil { rest = "library/" + rest }
        }
        if let colon = rest.lastIndex(of: ":") {
            tag = String(rest[rest.index(after: colon)...])
            rest = rest[..<colon]
        }
        repository = String(rest)
        if tag == nil && digest == nil { tag = "latest" }
        // host[:port] or [v6]:port: what a registries.conf or a URL can hold as it is.
        guard host.utf8.count <= 255, host.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || ".-:[]".contains($0)) }) else { return nil }
        guard ImageReference.isValidRepository(repository), tag.map(ImageReference.isValidTag) ?? true else { return nil }
    }

    public init(host: String, repository: String, tag: String) {
        self.host = host
        self.repository = repository
        self.tag = tag
    }

    /// Tag or digest, as the manifest endpoint takes it.
    public var reference: String { digest ?? tag ?? "latest" }

    public var description: String {
        "\(host)/\(repository)" + (tag.map { ":\($0)" } ?? "") + (digest.map { "@\($0)" } ?? "")
    }

    /// Lower-case path components of `[a-z0-9]+([._-][a-z0-9]+)*` separated by `/` (the distribution spec).
    public static func isValidRepository(_ name: String) -> Bool {
        guard !name.isEmpty, name.count <= 255 else { return false }
        return name.split(separator: "/", omittingEmptySubsequences: false).allSatisfy { component in
            guard let first = component.first, let last = component.last, first.isLowercaseAlphanumeric, last.isLowercaseAlphanumeric else { return false }
            return component.allSatisfy { $0.isLowercaseAlphanumeric || $0 == "." || $0 == "_" || $0 == "-" }
        }
    }

    public static func isValidTag(_ tag: String) -> Bool {
        guard let first = tag.first, tag.count <= 128, first.isASCII, first.isLetter || first.isNumber || first == "_" else { return false }
        return tag.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_" || $0 == "." || $0 == "-") }
    }
}

extension Character {
    var isLowercaseAlphanumeric: Bool { isASCII && (isLowercase || isNumber) }
}
