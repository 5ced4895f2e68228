//! What a drill measured, from its raw records (sans-IO: the load and the observers record,
//! this sums up; unit-tested with made-up timelines).

use serde::Serialize;

/// How one request through the VIP ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    Ok,
    /// Failed before any response byte (a client may retry an idempotent request).
    FailedBeforeResponse,
    /// Failed once the response had started (lost: only a Range request resumes it).
    FailedMidResponse,
    /// No answer and no error yet when the drill ended.
    Pending,
}

/// One request: when it started and ended (milliseconds since the drill started).
#[derive(Clone, Copy, Debug)]
pub struct Request {
    pub started_ms: u64,
    pub ended_ms: u64,
    pub ended: Ended,
}

/// Everything a drill recorded.
#[derive(Debug, Default)]
pub struct Timeline {
    /// When the fault was injected.
    pub fault_ms: u64,
    /// When the drill stopped sending and waiting.
    pub end_ms: u64,
    pub requests: Vec<Request>,
    /// First sign, after the fault, that the cluster noticed it: a priority-0 advert, a new
    /// master's advert, the director taking the faulty node out.
    pub detected_ms: Option<u64>,
    /// First advert of a new master after the fault.
    pub takeover_ms: Option<u64>,
    /// Kept-alive connections that ended with an error after the fault.
    pub connections_lost: u64,
}

/// The drill's figures, relative to the fault.
#[derive(Debug, Serialize, PartialEq)]
pub struct Report {
    pub detection_ms: Option<u64>,
    pub takeover_ms: Option<u64>,
    /// From the fault to the first success after the first failure (`None`: nothing failed).
    pub first_success_after_failure_ms: Option<u64>,
    pub requests_after_fault: u64,
    pub requests_ok: u64,
    pub failed_before_response: u64,
    pub failed_mid_response: u64,
    pub connections_lost: u64,
    /// Requests that got neither an answer nor an error within the hang limit (must be 0).
    pub hanging: u64,
    /// The longest a request of the fault's time waited for its error.
    pub longest_wait_for_an_error_ms: Option<u64>,
}

/// Sums `timeline` up; a request counts as hanging when it had neither an answer nor an
/// error `hang_ms` after it started.
pub fn summarize(timeline: &Timeline, hang_ms: u64) -> Report {
    let since = |at: u64| at.saturating_sub(timeline.fault_ms);
    // Requests in flight at the fault count with those sent after it.
    let relevant: Vec<&Request> = (timeline.requests.iter())
        .filter(|request| request.ended_ms >= timeline.fault_ms || request.ended == Ended::Pending)
        .collect();
    let count = |ended: Ended| {
        relevant
            .iter()
            .filter(|request| request.ended == ended)
            .count() as u64
    };
    let failed = |request: &&&Request| {
        matches!(
            request.ended,
            Ended::FailedBeforeResponse | Ended::FailedMidResponse
        )
    };
    let first_failure = relevant
        .iter()
        .filter(failed)
        .map(|request| request.ended_ms)
        .min();
    let first_success_after_failure_ms = first_failure.and_then(|failure| {
        (relevant.iter())
            .filter(|request| request.ended == Ended::Ok && request.ended_ms > failure)
            .map(|request| since(request.ended_ms))
            .min()
    });
    let hanging = (relevant.iter())
        .filter(|request| match request.ended {
            Ended::Ok => false,
            Ended::Pending => timeline.end_ms.saturating_sub(request.started_ms) >= hang_ms,
            _ => request.ended_ms.saturating_sub(request.started_ms) >= hang_ms,
        })
        .count() as u64;
    let longest_wait_for_an_error_ms = (relevant.iter())
        .filter(failed)
        .map(|request| {
            request.ended_ms
                - request
                    .started_ms
                    .max(timeline.fault_ms)
                    .min(request.ended_ms)
        })
        .max();
    Report {
        detection_ms: timeline.detected_ms.map(since),
        takeover_ms: timeline.takeover_ms.map(since),
        first_success_after_failure_ms,
        requests_after_fault: relevant.len() as u64,
        requests_ok: count(Ended::Ok),
        failed_before_response: count(Ended::FailedBeforeResponse),
        failed_mid_response: count(Ended::FailedMidResponse),
        connections_lost: timeline.connections_lost,
        hanging,
        longest_wait_for_an_error_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(started_ms: u64, ended_ms: u64, ended: Ended) -> Request {
        Request {
            started_ms,
            ended_ms,
            ended,
        }
    }

    #[test]
    fn a_failover_counts_what_was_lost_and_when_service_came_back() {
        let timeline = Timeline {
            fault_ms: 1_000,
            end_ms: 20_000,
            requests: vec![
                request(500, 600, Ended::Ok),                  // before: not counted
                request(900, 1_300, Ended::FailedMidResponse), // in flight at the fault
                request(1_100, 1_200, Ended::FailedBeforeResponse),
                request(1_400, 2_000, Ended::FailedBeforeResponse),
                request(2_100, 2_200, Ended::Ok),
                request(2_300, 2_310, Ended::Ok),
            ],
            detected_ms: Some(1_050),
            takeover_ms: Some(1_800),
            connections_lost: 2,
        };
        assert_eq!(
            summarize(&timeline, 10_000),
            Report {
                detection_ms: Some(50),
                takeover_ms: Some(800),
                first_success_after_failure_ms: Some(1_200),
                requests_after_fault: 5,
                requests_ok: 2,
                failed_before_response: 2,
                failed_mid_response: 1,
                connections_lost: 2,
                hanging: 0,
                longest_wait_for_an_error_ms: Some(600),
            }
        );
    }

    #[test]
    fn a_request_without_an_answer_or_an_error_past_the_limit_is_hanging() {
        let timeline = Timeline {
            fault_ms: 1_000,
            end_ms: 30_000,
            requests: vec![
                request(900, 0, Ended::Pending),
                request(1_000, 12_000, Ended::FailedBeforeResponse),
                request(25_000, 0, Ended::Pending), // still young at the end
                request(2_000, 2_100, Ended::Ok),
            ],
            ..Timeline::default()
        };
        let report = summarize(&timeline, 10_000);
        assert_eq!(report.hanging, 2);
        assert_eq!(
            report.first_success_after_failure_ms, None,
            "the success came before the failure"
        );
        assert_eq!(report.longest_wait_for_an_error_ms, Some(11_000));
    }

    #[test]
    fn a_drill_where_nothing_failed_reports_no_interruption() {
        let timeline = Timeline {
            fault_ms: 100,
            end_ms: 1_000,
            requests: vec![request(150, 160, Ended::Ok)],
            ..Timeline::default()
        };
        let report = summarize(&timeline, 10_000);
        assert_eq!((report.requests_ok, report.hanging), (1, 0));
        assert_eq!(report.first_success_after_failure_ms, None);
        assert_eq!(report.detection_ms, None);
    }
}
