//! The `staff-alerts` consumer: emails staff (`--staff-email`) when an
//! order takes a product's stock below its threshold (`stock.low`), once
//! per crossing: the event is written once per crossing and the delivery
//! step sends its email once.

use std::sync::Arc;

use anyhow::anyhow;
use lettre::message::Mailbox;

use super::delivery::{self, Delivery};
use super::notifications::mail_error;
use super::Consumer;
use crate::cache::SentMarks;
use crate::db::PgPool;
use crate::domain::{StockLow, STOCK_LOW};
use crate::mail::{render, Mailer};
use crate::messaging::consumer::{Disposition, HandleError, Handler, Message};
use crate::messaging::topology::ConsumerSpec;

pub const SPEC: ConsumerSpec = ConsumerSpec {
    name: "staff-alerts",
    routing_keys: &[STOCK_LOW],
};

pub const CONSUMER: Consumer = Consumer {
    spec: SPEC,
    build: |deps| {
        Box::new(StaffAlerts {
            db: deps.db.clone(),
            mailer: deps.mailer.clone(),
            sent_marks: deps.sent_marks.clone(),
            from: deps.from.clone(),
            staff: deps.staff.clone(),
        })
    },
};

pub struct StaffAlerts {
    pub db: PgPool,
    pub mailer: Arc<Mailer>,
    pub sent_marks: Arc<SentMarks>,
    pub from: Mailbox,
    pub staff: Mailbox,
}

impl Handler for StaffAlerts {
    fn spec(&self) -> ConsumerSpec {
        SPEC
    }

    fn handle(&self, message: &Message<'_>) -> Result<(), HandleError> {
        let event = parse(message.body)?;
        tracing::Span::current().record("order_id", event.order_id.0);
        let message_id = render::message_id_for(event.event_id, Some(SPEC.name));
        let target = target(&event, &message_id, message.attempt);
        delivery::once_sending(&self.db, &self.sent_marks, &target, |_| {
            let email = render::staff_alert(&event, &self.staff, &self.from, SPEC.name)
                .map_err(mail_error)?;
            let reply = self.mailer.send(&email).map_err(mail_error)?;
            tracing::info!(product_id = %event.product.id, to = %self.staff, smtp_reply = %reply, "low-stock alert sent");
            Ok(reply)
        })
        .map(drop)
    }

    fn durable(&self) -> anyhow::Result<()> {
        delivery::make_durable(&self.db)
    }

    fn failed(
        &self,
        message: &Message<'_>,
        error: &HandleError,
        disposition: Disposition,
    ) -> anyhow::Result<()> {
        let Ok(event) = parse(message.body) else {
            return Ok(());
        };
        let message_id = render::message_id_for(event.event_id, Some(SPEC.name));
        let target = target(&event, &message_id, message.attempt);
        delivery::record_failure(&self.db, &target, error, disposition)
    }
}

fn parse(body: &[u8]) -> Result<StockLow, HandleError> {
    StockLow::from_json(body).map_err(|e| {
        HandleError::Permanent(anyhow!(e).context("the message is not a valid stock.low event"))
    })
}

fn target<'a>(event: &StockLow, message_id: &'a str, attempt: u32) -> Delivery<'a> {
    Delivery {
        event_id: event.event_id,
        consumer: SPEC.name,
        order_id: event.order_id.0,
        message_id: Some(message_id),
        attempt,
    }
}
