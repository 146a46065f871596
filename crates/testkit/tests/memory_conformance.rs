//! The whole conformance suite against causeway-core's in-memory backends.

mod broker {
    causeway_testkit::broker_conformance!(async {
        causeway_testkit::memory::MemoryBrokerHarness::new()
    });
}

mod event_store {
    causeway_testkit::event_store_conformance!(async {
        causeway_testkit::memory::MemoryEventStoreHarness
    });
}

mod dedup_store {
    causeway_testkit::dedup_store_conformance!(async {
        causeway_testkit::memory::MemoryDedupStoreHarness
    });
}
