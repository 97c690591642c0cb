//! What each email says: subject, plain-text body and a Message-ID derived
//! from the event, so the same event always renders the same email.

use lettre::message::{header::ContentType, Mailbox};
use lettre::Message;

use super::MailError;
use crate::db::models::User;
use crate::domain::OrderCreated;

/// The Message-ID for an event: the same event always yields the same one,
/// so a duplicate send is detectable downstream.
pub fn message_id(event: &OrderCreated) -> String {
    format!("<{}@ordctl>", event.event_id)
}

/// Renders the confirmation for `event` to `user`. An address the email
/// cannot be built with is a permanent failure.
pub fn confirmation(
    event: &OrderCreated,
    user: &User,
    from: &Mailbox,
) -> Result<Message, MailError> {
    let to: Mailbox = format!(
        "{} <{}>",
        user.name.replace(['<', '>', '"'], ""),
        user.email
    )
    .parse()
    .map_err(|e| {
        MailError::Permanent(format!(
            "invalid address {:?} for user {}: {e}",
            user.email, user.id
        ))
    })?;
    let order = &event.order;
    let body = format!(
        "Hello {name},\n\n\
         thank you for your order #{id}.\n\n\
         Amount: {amount} {currency}\n\
         Placed: {placed}\n\n\
         We will let you know when it ships.\n",
        name = user.name,
        id = order.id,
        amount = order.amount,
        currency = order.currency,
        placed = event.occurred_at.format("%Y-%m-%d %H:%M:%S UTC"),
    );
    Message::builder()
        .from(from.clone())
        .to(to)
        .subject(format!("Order #{} confirmed", order.id))
        .message_id(Some(message_id(event)))
        .header(ContentType::TEXT_PLAIN)
        .body(body)
        .map_err(|e| MailError::Permanent(format!("building the email: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Currency, Money, OrderSnapshot};
    use lettre::transport::stub::StubTransport;
    use lettre::Transport;

    fn event() -> OrderCreated {
        let order = OrderSnapshot {
            id: 42,
            user_id: 3,
            amount: Money::parse("42").unwrap(),
            currency: Currency::default(),
            items: Vec::new(),
        };
        OrderCreated::new(order, chrono::Utc::now())
    }

    fn user(email: &str) -> User {
        User {
            id: 3,
            name: "Demo User 3".into(),
            email: email.into(),
        }
    }

    #[test]
    fn confirmation_names_order_amount_and_a_stable_message_id() {
        let event = event();
        let from: Mailbox = "Orders <orders@example.com>".parse().unwrap();
        let email = confirmation(&event, &user("user3@example.com"), &from).unwrap();
        let stub = StubTransport::new_ok();
        stub.send(&email).unwrap();
        let (envelope, text) = &stub.messages()[0];
        assert_eq!(envelope.to()[0].to_string(), "user3@example.com");
        assert!(text.contains("Subject: Order #42 confirmed"), "{text}");
        assert!(text.contains("42.00 USD"), "{text}");
        assert!(
            text.contains(&format!("Message-ID: <{}@ordctl>", event.event_id)),
            "{text}"
        );
        let again = confirmation(&event, &user("user3@example.com"), &from).unwrap();
        assert_eq!(
            again.headers().get_raw("Message-ID"),
            email.headers().get_raw("Message-ID")
        );
    }

    #[test]
    fn an_invalid_address_is_permanent() {
        let from: Mailbox = "orders@example.com".parse().unwrap();
        let error = confirmation(&event(), &user("not an address"), &from).unwrap_err();
        assert!(matches!(error, MailError::Permanent(_)), "{error:?}");
    }
}
