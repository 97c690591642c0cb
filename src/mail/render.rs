//! What each email says: subject, plain-text body and a Message-ID derived
//! from the event, so the same event always renders the same email.

use lettre::message::{header::ContentType, Mailbox};
use lettre::Message;

use super::error::MailError;
use crate::db::models::User;
use uuid::Uuid;

use crate::domain::{OrderCancelled, OrderCreated, OrderSnapshot, OrderStatusUpdated, StockLow};

/// The Message-ID of the `notifications` consumer's email for an event:
/// the same event always yields the same one, so a duplicate send is
/// detectable downstream.
pub fn message_id(event: &OrderCreated) -> String {
    message_id_for(event.event_id, None)
}

/// A Message-ID per (event, consumer): `<EVENT_ID@ordctl>` for the
/// customer's emails (`notifications`), `<EVENT_ID.CONSUMER@ordctl>` for
/// any other consumer's, so two consumers' emails about one event differ.
pub fn message_id_for(event_id: Uuid, consumer: Option<&str>) -> String {
    match consumer {
        None => format!("<{event_id}@ordctl>"),
        Some(consumer) => format!("<{event_id}.{consumer}@ordctl>"),
    }
}

/// Renders the confirmation for `event` to `user`. An address the email
/// cannot be built with is a permanent failure.
pub fn confirmation(
    event: &OrderCreated,
    user: &User,
    from: &Mailbox,
) -> Result<Message, MailError> {
    let order = &event.order;
    let text = format!(
        "thank you for your order #{id}.\n\n\
         Amount: {amount} {currency}\n\
         Placed: {placed}\n\n\
         We will let you know when it ships.\n",
        id = order.id,
        amount = order.amount,
        currency = order.currency,
        placed = event.occurred_at.format("%Y-%m-%d %H:%M:%S UTC"),
    );
    to_customer(user, from, event.event_id, order, "confirmed", &text)
}

/// Renders the cancellation of an order (its payment was declined, or an
/// admin cancelled it) to its customer.
pub fn cancellation(
    event: &OrderCancelled,
    user: &User,
    from: &Mailbox,
) -> Result<Message, MailError> {
    let text = format!(
        "your {} has been cancelled.\n\n\
         Reason: {}\n\n\
         Nothing has been charged. You are welcome to order again.\n",
        of_amount(&event.order),
        event.reason,
    );
    to_customer(user, from, event.event_id, &event.order, "cancelled", &text)
}

/// Renders an admin's status move (`shipped`, `delivered`, …) to the
/// order's customer.
pub fn status_update(
    event: &OrderStatusUpdated,
    user: &User,
    from: &Mailbox,
) -> Result<Message, MailError> {
    let text = format!(
        "your {} is now {} (it was {}).\n",
        of_amount(&event.order),
        event.to,
        event.from,
    );
    let subject = format!("is {}", event.to);
    to_customer(user, from, event.event_id, &event.order, &subject, &text)
}

/// An email to the order's customer about event `event_id`: subject
/// "Order #ID {subject}", "Hello NAME," then `text`, the customer Message-ID.
fn to_customer(
    user: &User,
    from: &Mailbox,
    event_id: Uuid,
    order: &OrderSnapshot,
    subject: &str,
    text: &str,
) -> Result<Message, MailError> {
    build(
        from,
        customer(user)?,
        format!("Order #{} {subject}", order.id),
        message_id_for(event_id, None),
        format!("Hello {},\n\n{text}", user.name),
    )
}

/// "order #ID of AMOUNT CURRENCY".
fn of_amount(order: &OrderSnapshot) -> String {
    format!("order #{} of {} {}", order.id, order.amount, order.currency)
}

/// Renders the low-stock alert for staff.
pub fn staff_alert(
    event: &StockLow,
    staff: &Mailbox,
    from: &Mailbox,
    consumer: &str,
) -> Result<Message, MailError> {
    let product = &event.product;
    let body = format!(
        "Product #{id} \"{name}\" is low on stock.\n\n\
         Stock left: {stock}\n\
         Threshold:  {threshold}\n\
         Crossed by: order #{order}\n\n\
         Restock it with: ordctl product restock {id} --quantity N\n",
        id = product.id,
        name = product.name,
        stock = product.stock,
        threshold = product.low_stock_threshold,
        order = event.order_id,
    );
    let subject = format!(
        "Low stock: {} (product #{}, {} left)",
        product.name, product.id, product.stock
    );
    let id = message_id_for(event.event_id, Some(consumer));
    build(from, staff.clone(), subject, id, body)
}

/// The customer's mailbox; an address no email can be built with is a
/// permanent failure.
fn customer(user: &User) -> Result<Mailbox, MailError> {
    format!(
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
    })
}

fn build(
    from: &Mailbox,
    to: Mailbox,
    subject: String,
    message_id: String,
    body: String,
) -> Result<Message, MailError> {
    Message::builder()
        .from(from.clone())
        .to(to)
        .subject(subject)
        .message_id(Some(message_id))
        .header(ContentType::TEXT_PLAIN)
        .body(body)
        .map_err(|e| MailError::Permanent(format!("building the email: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Currency, Money, OrderId, OrderSnapshot, UserId};
    use lettre::transport::stub::StubTransport;
    use lettre::Transport;

    fn event() -> OrderCreated {
        let order = OrderSnapshot {
            id: OrderId(42),
            user_id: UserId(3),
            amount: Money::parse("42").unwrap(),
            currency: Currency::default(),
            items: Vec::new(),
        };
        OrderCreated::new(order, chrono::Utc::now())
    }

    fn user(email: &str) -> User {
        User {
            id: UserId(3),
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

    fn sent(email: &Message) -> (String, String) {
        let stub = StubTransport::new_ok();
        stub.send(email).unwrap();
        let (envelope, text) = stub.messages().remove(0);
        (envelope.to()[0].to_string(), text)
    }

    #[test]
    fn cancellation_and_status_emails_name_the_order_and_why() {
        let from: Mailbox = "orders@example.com".parse().unwrap();
        let order = event().order;
        let cancelled =
            OrderCancelled::new(order.clone(), "payment declined".into(), chrono::Utc::now());
        let (to, text) =
            sent(&cancellation(&cancelled, &user("user3@example.com"), &from).unwrap());
        assert_eq!(to, "user3@example.com");
        assert!(text.contains("Subject: Order #42 cancelled"), "{text}");
        assert!(text.contains("Reason: payment declined"), "{text}");
        assert!(
            text.contains(&format!("<{}@ordctl>", cancelled.event_id)),
            "{text}"
        );

        use crate::domain::OrderStatus;
        let moved = OrderStatusUpdated::new(
            order,
            OrderStatus::Paid,
            OrderStatus::Shipped,
            chrono::Utc::now(),
        );
        let (_, text) = sent(&status_update(&moved, &user("user3@example.com"), &from).unwrap());
        assert!(text.contains("Subject: Order #42 is shipped"), "{text}");
        assert!(text.contains("now shipped (it was paid)"), "{text}");
    }

    #[test]
    fn staff_alerts_name_the_product_stock_and_threshold_with_their_own_message_id() {
        use crate::domain::events::ProductSnapshot;
        use crate::domain::{OrderId, ProductId};
        let from: Mailbox = "orders@example.com".parse().unwrap();
        let staff: Mailbox = "staff@example.com".parse().unwrap();
        let product = ProductSnapshot {
            id: ProductId(5),
            name: "Widget".into(),
            stock: 4,
            low_stock_threshold: 5,
        };
        let event = StockLow::new(product, OrderId(9), chrono::Utc::now());
        let (to, text) = sent(&staff_alert(&event, &staff, &from, "staff-alerts").unwrap());
        assert_eq!(to, "staff@example.com");
        assert!(
            text.contains("Subject: Low stock: Widget (product #5, 4 left)"),
            "{text}"
        );
        assert!(text.contains("Threshold:  5"), "{text}");
        assert!(
            text.contains(&format!("<{}.staff-alerts@ordctl>", event.event_id)),
            "{text}"
        );
    }
}
