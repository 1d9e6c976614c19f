import Foundation
import Testing

@testable import SlipwayACME

@Suite struct RetryAfterTests {
    static let now = Date(timeIntervalSince1970: 784_111_777)  // Sun, 06 Nov 1994 08:49:37 GMT

    @Test func delaySeconds() {
        #expect(RetryAfter.parse("120", now: Self.now) == .seconds(120))
        #expect(RetryAfter.parse(" 0 ", now: Self.now) == .zero)
        #expect(RetryAfter.parse("99999999999999999999999", now: Self.now) == .seconds(Int(Int32.max)))
    }

    @Test func httpDates() {
        #expect(RetryAfter.parse("Sun, 06 Nov 1994 08:51:37 GMT", now: Self.now) == .seconds(120))
        #expect(RetryAfter.parse("Sunday, 06-Nov-94 08:50:07 GMT", now: Self.now) == .seconds(30))
        #expect(RetryAfter.parse("Sun Nov  6 08:49:47 1994", now: Self.now) == .seconds(10))
        // A date already past means "now".
        #expect(RetryAfter.parse("Sun, 06 Nov 1994 08:00:00 GMT", now: Self.now) == .zero)
    }

    @Test func garbageIsNil() {
        #expect(RetryAfter.parse("", now: Self.now) == nil)
        #expect(RetryAfter.parse("-5", now: Self.now) == nil)
        #expect(RetryAfter.parse("1.5", now: Self.now) == nil)
        #expect(RetryAfter.parse("tomorrow", now: Self.now) == nil)
    }

    @Test func renewalDateIsTwoThirdsIntoTheLifetime() {
        let notBefore = Date(timeIntervalSince1970: 1_700_000_000)
        // 90 days → day 60.
        #expect(ACMEClient.renewalDate(notBefore: notBefore, notAfter: notBefore.addingTimeInterval(90 * 86400)) == notBefore.addingTimeInterval(60 * 86400))
        // 6 days (short-lived certificates) → day 4.
        #expect(ACMEClient.renewalDate(notBefore: notBefore, notAfter: notBefore.addingTimeInterval(6 * 86400)) == notBefore.addingTimeInterval(4 * 86400))
        // pebble's 5 years (157 766 400 s) → 105 177 600 s in.
        #expect(ACMEClient.renewalDate(notBefore: notBefore, notAfter: notBefore.addingTimeInterval(157_766_400)) == notBefore.addingTimeInterval(105_177_600))
    }
}
