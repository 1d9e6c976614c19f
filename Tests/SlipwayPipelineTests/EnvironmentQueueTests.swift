import Testing

@testable import SlipwayPipeline

@Suite struct EnvironmentQueueTests {
    typealias Entry = EnvironmentQueue.Entry

    func deploy(_ id: String, _ services: [String], key: String? = nil) -> Entry {
        Entry(deploymentID: id, action: .deploy, services: services, idempotencyKey: key)
    }

    @Test func oneActionRunsAndTheNextOnesWaitInOrder() {
        var queue = EnvironmentQueue()
        #expect(queue.enqueue(deploy("d1", ["web"])).placement == .started)
        #expect(queue.enqueue(Entry(deploymentID: "r1", action: .restart, services: ["web"])).placement == .queued(position: 1))
        #expect(queue.enqueue(deploy("d2", ["api"])).placement == .queued(position: 2))
        #expect(queue.position(of: "d2") == 2)
        let afterD1 = queue.finish("d1")
        #expect(afterD1?.deploymentID == "r1")
        let afterR1 = queue.finish("r1")
        #expect(afterR1?.deploymentID == "d2")
        let afterD2 = queue.finish("d2")
        #expect(afterD2 == nil)
        #expect(queue.running == nil)
        // The next one starts at once again.
        #expect(queue.enqueue(deploy("d3", ["web"])).placement == .started)
    }

    @Test func aNewerDeployOfAServiceSupersedesTheQueuedOneAndTheRecordSaysSo() {
        var queue = EnvironmentQueue()
        _ = queue.enqueue(deploy("running", ["web"]))
        _ = queue.enqueue(deploy("old", ["web", "api"]))
        let newer = queue.enqueue(deploy("new", ["web"]))
        #expect(newer.placement == .queued(position: 2))
        #expect(newer.superseded == ["old": ["web"]])
        #expect(newer.removed.isEmpty)
        // The older deployment keeps the service the newer one does not cover.
        #expect(queue.waiting.map(\.services) == [["api"], ["web"]])

        let newest = queue.enqueue(deploy("newest", ["api", "web"]))
        #expect(newest.superseded == ["old": ["api"], "new": ["web"]])
        #expect(newest.removed.sorted() == ["new", "old"])
        #expect(queue.waiting.map(\.deploymentID) == ["newest"])
        // The running deployment is never touched.
        #expect(queue.running?.services == ["web"])
    }

    @Test func otherActionsAreNotSuperseded() {
        var queue = EnvironmentQueue()
        _ = queue.enqueue(deploy("running", ["web"]))
        _ = queue.enqueue(Entry(deploymentID: "stop", action: .stop, services: ["web"]))
        let result = queue.enqueue(deploy("deploy", ["web"]))
        #expect(result.superseded.isEmpty)
        #expect(queue.waiting.map(\.deploymentID) == ["stop", "deploy"])
    }

    @Test func aRetryWithTheSameIdempotencyKeyIsTheSameDeployment() {
        var queue = EnvironmentQueue()
        _ = queue.enqueue(deploy("d1", ["web"], key: "delivery-42"))
        #expect(queue.enqueue(deploy("d2", ["web"], key: "delivery-42")).placement == .duplicate(of: "d1"))
        #expect(queue.waiting.isEmpty)
        // Still a duplicate after the first one finished: a retry never deploys twice.
        _ = queue.finish("d1")
        #expect(queue.enqueue(deploy("d3", ["web"], key: "delivery-42")).placement == .duplicate(of: "d1"))
        #expect(queue.enqueue(deploy("d4", ["web"], key: "delivery-43")).placement == .started)
    }

    @Test func rememberedKeysAreBounded() {
        var queue = EnvironmentQueue(maxRememberedKeys: 2)
        for i in 0..<3 {
            _ = queue.enqueue(deploy("d\(i)", ["web"], key: "k\(i)"))
            _ = queue.finish("d\(i)")
        }
        #expect(queue.enqueue(deploy("again", ["web"], key: "k0")).placement == .started)
        #expect(queue.enqueue(deploy("again2", ["web"], key: "k2")).placement == .duplicate(of: "d2"))
    }

    @Test func aWaitingDeploymentCanBeRemovedButNotTheRunningOne() {
        var queue = EnvironmentQueue()
        _ = queue.enqueue(deploy("d1", ["web"]))
        _ = queue.enqueue(deploy("d2", ["api"]))
        let removedRunning = queue.remove("d1")
        #expect(removedRunning == false)
        let removedWaiting = queue.remove("d2")
        #expect(removedWaiting)
        #expect(queue.waiting.isEmpty)
        // Finishing a deployment that is not the running one changes nothing.
        let next = queue.finish("d2")
        #expect(next == nil)
        #expect(queue.running?.deploymentID == "d1")
    }
}
