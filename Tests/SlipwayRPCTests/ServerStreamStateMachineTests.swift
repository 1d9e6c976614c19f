import Testing

@testable import SlipwayRPC

/// One server call's protocol state, event by event, without sockets.
@Suite struct ServerStreamStateMachineTests {
    typealias Machine = ServerStreamStateMachine

    @Test func aUnaryCallReadsOneMessageThenRunsAndStreamsItsResponse() {
        var call = Machine()
        #expect(call.acceptedCall(singleRequest: true) == false)  // waits for its message
        #expect(call.readsData)
        #expect(call.messageReceived() == .keepAsRequest)
        #expect(call.endOfInput(strayBytes: 0, path: "/a.B/C") == .startHandler)
        #expect(call.handlerStarted)
        #expect(!call.readsData)
        // The handler wrote a message: headers, then the body as nghttp2 asks for it.
        #expect(call.responseReady(hasData: true, ended: false, statusOnly: false, aborted: false) == .grpcHeaders)
        #expect(call.headersSent)
        #expect(call.dataRequested(count: 105, ended: false) == .send)
        #expect(call.dataRequested(count: 0, ended: false) == .deferred)
        #expect(call.response == .open(deferred: true))
        #expect(call.responseReady(hasData: true, ended: true, statusOnly: false, aborted: false) == .resume)
        #expect(call.responseReady(hasData: true, ended: true, statusOnly: false, aborted: false) == .none)
        #expect(call.dataRequested(count: 0, ended: true) == .end(trailers: true))
        #expect(call.finished)
        // A clean close after the trailers is not a cancellation; nothing is failed twice.
        #expect(call.failed() == .none)
        #expect(call.closed(errorCode: 0) == false)
    }

    @Test func aSingleRequestMethodRefusesZeroOrSeveralMessagesAndStrayBytes() {
        var none = Machine()
        _ = none.acceptedCall(singleRequest: true)
        #expect(none.endOfInput(strayBytes: 0, path: "/a.B/C") == .fail(RPCError(.unimplemented, "/a.B/C takes exactly one request message, got 0")))

        var two = Machine()
        _ = two.acceptedCall(singleRequest: true)
        #expect(two.messageReceived() == .keepAsRequest)
        #expect(two.messageReceived() == .drop)
        #expect(two.endOfInput(strayBytes: 0, path: "/a.B/C") == .fail(RPCError(.unimplemented, "/a.B/C takes exactly one request message, got 2")))
        #expect(!two.handlerStarted)
        // Nothing was started: the failure is a trailers-only refusal.
        #expect(two.failed() == .refuse)

        var cut = Machine()
        _ = cut.acceptedCall(singleRequest: true)
        #expect(cut.endOfInput(strayBytes: 3, path: "/a.B/C") == .fail(RPCError(.internal, "the request ended inside a message (3 stray bytes)")))
    }

    @Test func aStreamingCallStartsAtOnceAndItsRequestsEndWithEndStream() {
        var call = Machine()
        #expect(call.acceptedCall(singleRequest: false) == true)
        #expect(call.messageReceived() == .deliver)
        #expect(call.messageReceived() == .deliver)
        #expect(call.endOfInput(strayBytes: 0, path: "/a.B/C") == .finishRequests)
        #expect(call.messageReceived() == .drop)
        #expect(call.endOfInput(strayBytes: 0, path: "/a.B/C") == .none)
    }

    @Test func aStatusWithoutMessagesIsATrailersOnlyResponse() {
        var call = Machine()
        _ = call.acceptedCall(singleRequest: true)
        _ = call.messageReceived()
        _ = call.endOfInput(strayBytes: 0, path: "/a.B/C")
        #expect(call.responseReady(hasData: false, ended: true, statusOnly: true, aborted: false) == .trailersOnly)
        #expect(call.response == .ended)
        #expect(call.closed(errorCode: 0) == false)
    }

    @Test func aFailureWhileRunningEndsThroughTheWriterOnceAndDropsLaterInput() {
        var call = Machine()
        _ = call.acceptedCall(singleRequest: false)
        #expect(call.failed() == .status)
        #expect(call.failed() == .none)
        #expect(!call.readsData)
        #expect(call.messageReceived() == .drop)
        #expect(call.endOfInput(strayBytes: 0, path: "/a.B/C") == .none)
        // The status still goes out (trailers-only here: nothing was written).
        #expect(call.responseReady(hasData: false, ended: true, statusOnly: true, aborted: false) == .trailersOnly)
    }

    @Test func aClientResetOrACloseBeforeTheEndCancelsTheHandler() {
        var reset = Machine()
        _ = reset.acceptedCall(singleRequest: false)
        #expect(reset.closed(errorCode: HTTP2ErrorCode.cancel) == true)

        var early = Machine()
        _ = early.acceptedCall(singleRequest: false)
        _ = early.responseReady(hasData: true, ended: false, statusOnly: false, aborted: false)
        #expect(early.closed(errorCode: 0) == true)

        // Even after the last frame, a reset from the client cancels.
        var late = Machine()
        _ = late.acceptedCall(singleRequest: false)
        _ = late.responseReady(hasData: false, ended: true, statusOnly: true, aborted: false)
        #expect(late.closed(errorCode: HTTP2ErrorCode.cancel) == true)
    }

    @Test func aRefusedCallReadsNothingMoreAndItsCloseIsNoCancellation() {
        var call = Machine()
        call.refused()
        #expect(call.finished)
        #expect(!call.readsData)
        #expect(call.messageReceived() == .drop)
        #expect(call.failed() == .none)
        #expect(call.closed(errorCode: 0) == false)
    }

    @Test func aPlainRequestCollectsItsBodyThenAnswersWithAHeadAndEndsWithoutTrailers() {
        var request = Machine()
        request.acceptedPlain()
        #expect(request.isPlain)
        #expect(request.awaitsPlainBody)
        #expect(request.endOfInput(strayBytes: 0, path: "/webhooks/x") == .startPlain)
        #expect(!request.awaitsPlainBody)
        // Nothing written yet: no head.
        #expect(request.responseReady(hasData: false, ended: false, statusOnly: false, aborted: false) == .none)
        #expect(request.responseReady(hasData: true, ended: false, statusOnly: false, aborted: false) == .plainHead(hasBody: true))
        #expect(request.dataRequested(count: 10, ended: true) == .end(trailers: false))
        #expect(request.closed(errorCode: 0) == false)

        var empty = Machine()
        empty.acceptedPlain()
        _ = empty.endOfInput(strayBytes: 0, path: "/healthz")
        #expect(empty.responseReady(hasData: false, ended: true, statusOnly: false, aborted: false) == .plainHead(hasBody: false))
        #expect(empty.finished)
    }

    @Test func aPlainHandlerThatFailsGetsA500BeforeItsHeadAndAResetAfter() {
        var before = Machine()
        before.acceptedPlain()
        _ = before.endOfInput(strayBytes: 0, path: "/x")
        #expect(before.responseReady(hasData: false, ended: false, statusOnly: false, aborted: true) == .refusePlain(status: 500))

        var after = Machine()
        after.acceptedPlain()
        _ = after.endOfInput(strayBytes: 0, path: "/x")
        _ = after.responseReady(hasData: true, ended: false, statusOnly: false, aborted: false)
        #expect(after.responseReady(hasData: false, ended: false, statusOnly: false, aborted: true) == .reset)
        #expect(after.finished)

        // Failures from outside (a deadline, the body's time limit): 503 before the head, a reset after.
        var slow = Machine()
        slow.acceptedPlain()
        #expect(slow.failed() == .refusePlain)
        var cut = Machine()
        cut.acceptedPlain()
        _ = cut.endOfInput(strayBytes: 0, path: "/x")
        _ = cut.responseReady(hasData: true, ended: false, statusOnly: false, aborted: false)
        #expect(cut.failed() == .reset)
        #expect(cut.failed() == .none)
    }
}
