package com.example.relay;

import org.springframework.http.ResponseEntity;
import org.springframework.messaging.simp.SimpMessagingTemplate;
import org.springframework.web.bind.annotation.PathVariable;
import org.springframework.web.bind.annotation.PostMapping;
import org.springframework.web.bind.annotation.RequestBody;
import org.springframework.web.bind.annotation.RestController;

/**
 * Server push from ordinary application code: the messaging template sends over the relay's
 * system connection to the broker, which delivers to the subscribers.
 *
 * <pre>
 * curl -XPOST localhost:8080/api/greetings -H 'content-type: text/plain' -d 'hi all'
 * curl -XPOST localhost:8080/api/notes/alice -H 'content-type: text/plain' -d 'hi alice'
 * </pre>
 */
@RestController
public class PublishController {

    private final SimpMessagingTemplate template;

    public PublishController(SimpMessagingTemplate template) {
        this.template = template;
    }

    /** Everyone subscribed to {@code /topic/greetings}. */
    @PostMapping("/api/greetings")
    public ResponseEntity<Void> greetAll(@RequestBody String text) {
        template.convertAndSend("/topic/greetings", new ChatController.Greeting(text, "server"));
        return ResponseEntity.accepted().build();
    }

    /** Every session of {@code user} subscribed to {@code /user/queue/notes}. */
    @PostMapping("/api/notes/{user}")
    public ResponseEntity<Void> note(@PathVariable String user, @RequestBody String text) {
        template.convertAndSendToUser(user, "/queue/notes", new ChatController.Greeting(text, "server"));
        return ResponseEntity.accepted().build();
    }
}
