package com.example.relay;

import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.springframework.context.event.EventListener;
import org.springframework.messaging.simp.broker.BrokerAvailabilityEvent;
import org.springframework.stereotype.Component;

/**
 * Logs when the relay's system connection to the broker goes down and comes back (the relay
 * retries every 5 seconds). While it is down, sends to /topic and /queue fail.
 */
@Component
public class BrokerAvailabilityLogger {

    private static final Logger log = LoggerFactory.getLogger(BrokerAvailabilityLogger.class);

    @EventListener
    public void onBrokerAvailability(BrokerAvailabilityEvent event) {
        if (event.isBrokerAvailable()) {
            log.info("stomp-broker available");
        } else {
            log.warn("stomp-broker unavailable; the relay reconnects every 5 s");
        }
    }
}
