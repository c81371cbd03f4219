package com.example.relay;

import java.security.Principal;
import org.springframework.messaging.handler.annotation.MessageMapping;
import org.springframework.messaging.handler.annotation.SendTo;
import org.springframework.stereotype.Controller;

/** A SEND to {@code /app/hello} is answered on {@code /topic/greetings}, through the broker. */
@Controller
public class ChatController {

    /** What a client sends to {@code /app/hello}. */
    public record Hello(String name) {}

    /** What subscribers of {@code /topic/greetings} receive. */
    public record Greeting(String text, String from) {}

    @MessageMapping("/hello")
    @SendTo("/topic/greetings")
    public Greeting hello(Hello hello, Principal user) {
        return new Greeting("Hello, " + hello.name() + "!", user.getName());
    }
}
