//! The `staff-alerts` consumer: emails staff (`--staff-email`) when an
//! order takes a product's stock below its threshold (`stock.low`), once
//! per crossing: the event is written once per crossing and the delivery
//! step sends its email once.

use std::sync::Arc;

use anyhow::anyhow;
use diesel::PgConnection;
use lettre::message::Mailbox;
use uuid::Uuid;

use super::delivery::Delivery;
use super::handler::{Consume, Consumer, Kind, Logged};
use crate::cache::SentMarks;
use crate::domain::{OrderId, StockLow, STOCK_LOW};
use crate::mail::{mail_error, render, Mailer};
use crate::messaging::consumer::HandleError;
use crate::messaging::topology::ConsumerSpec;

pub const SPEC: ConsumerSpec = ConsumerSpec {
    name: "staff-alerts",
    routing_keys: &[STOCK_LOW],
};

pub const CONSUMER: Consumer = Consumer {
    spec: SPEC,
    build: |deps| {
        Logged::boxed(
            &deps.db,
            StaffAlerts {
                mailer: deps.mailer.clone(),
                sent_marks: deps.sent_marks.clone(),
                from: deps.from.clone(),
                staff: deps.staff.clone(),
            },
        )
    },
};

pub struct StaffAlerts {
    pub mailer: Arc<Mailer>,
    pub sent_marks: Arc<SentMarks>,
    pub from: Mailbox,
    pub staff: Mailbox,
}

impl Consume for StaffAlerts {
    type Event = StockLow;

    const SPEC: ConsumerSpec = SPEC;

    fn parse(body: &[u8]) -> Result<StockLow, HandleError> {
        StockLow::from_json(body).map_err(|e| {
            HandleError::Permanent(anyhow!(e).context("the message is not a valid stock.low event"))
        })
    }

    fn keys(event: &StockLow) -> (Uuid, OrderId) {
        (event.event_id, event.order_id)
    }

    fn message_id(event: &StockLow) -> Option<String> {
        Some(render::message_id_for(event.event_id, Some(SPEC.name)))
    }

    fn kind(&self) -> Kind<'_> {
        Kind::Sends(&self.sent_marks)
    }

    fn effect(
        &self,
        _conn: &mut PgConnection,
        event: &StockLow,
        _delivery: &Delivery,
    ) -> Result<String, HandleError> {
        let email =
            render::staff_alert(event, &self.staff, &self.from, SPEC.name).map_err(mail_error)?;
        let reply = self.mailer.send(&email).map_err(mail_error)?;
        tracing::info!(product_id = %event.product.id, to = %self.staff, smtp_reply = %reply, "low-stock alert sent");
        Ok(reply)
    }
}
