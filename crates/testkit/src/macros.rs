/// Expands the broker scenarios into one test each for a backend.
///
/// `$harness` is an expression evaluating to a future of a value that
/// implements [`crate::BrokerHarness`]; it is evaluated once per test.
///
/// ```text
/// causeway_testkit::broker_conformance!(async { MyHarness::connect().await });
/// ```
#[macro_export]
macro_rules! broker_conformance {
    ($harness:expr) => {
        $crate::__scenario_tests!(broker, $harness;
            round_trip_every_field,
            connect_before_publish,
            batch_publish_1000,
            ack_removes,
            nack_redelivers,
            nack_holds_back_nothing_else,
            reject_dead_letters,
            no_ack_redelivers_after_timeout,
            per_key_order,
            ordered_publish_keeps_a_calls_order,
            pipelined_calls_keep_their_order,
            pipelined_calls_across_a_cut,
            consumer_group_shares_work,
            restart_resumes_without_loss,
            duplicate_publish,
            same_id_from_two_sources,
            foreign_message_is_carried_raw,
            undecodable_message_is_handed_out,
            structured_cloudevent_is_read,
            raw_round_trip,
            raw_is_read_by_a_foreign_consumer,
            oversize_event_is_rejected_permanently,
            invalid_event_is_rejected,
            reconnect_after_cut,
            cut_mid_stream,
            concurrent_batches,
        );
    };
}

/// Expands the event store scenarios into one test each for a backend.
#[macro_export]
macro_rules! event_store_conformance {
    ($harness:expr) => {
        $crate::__scenario_tests!(store, $harness;
            append_and_read_back,
            duplicates_are_refused,
            read_by_position_time_and_filter,
            cursors,
            retention_respects_cursors,
            retention_keeps_streams_without_a_cursor,
            read_past_the_end_is_empty,
            stats,
            concurrent_appends,
        );
    };
}

/// Expands the dedup store scenarios into one test each for a backend.
#[macro_export]
macro_rules! dedup_store_conformance {
    ($harness:expr) => {
        $crate::__scenario_tests!(dedup, $harness;
            claim_commit_done,
            release_makes_claimable,
            expired_lease_is_fenced,
            renewal_extends_and_fences,
            late_commit_without_takeover,
            committed_keys_expire,
            batch_claims,
            concurrent_claims_commit_once,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __scenario_tests {
    ($module:ident, $harness:expr; $($scenario:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() {
                let harness = $harness.await;
                $crate::$module::$scenario(&harness).await;
            }
        )+
    };
}
