//! `ordctl product add|list|show|restock`

use ordctl::cache::ProductCache;
use ordctl::db;
use ordctl::domain::{
    Currency, Money, NewProduct, Product, ProductId, ProductName, Quantity, StockLevel,
};
use ordctl::error::InvalidInput;
use ordctl::pipeline::products;

use super::Ctx;
use crate::output;

/// Products and their stock.
///
/// Examples: `ordctl product add --name Mug --price 12.50 --stock 100`,
/// `ordctl product restock 5 --quantity 50`, `ordctl product list --json`
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: ProductCommand,
}

#[derive(clap::Subcommand)]
enum ProductCommand {
    Add(AddArgs),
    List(ListArgs),
    Show(ShowArgs),
    Restock(RestockArgs),
}

/// Add a product. Its low-stock threshold is half its stock unless given;
/// a threshold given here stays put, the default one follows each restock.
///
/// Example: `ordctl product add --name Mug --price 12.50 --stock 100`
#[derive(clap::Args)]
struct AddArgs {
    /// The product's name (1 to 200 characters).
    #[arg(long)]
    name: ProductName,

    /// Unit price: a decimal > 0 with at most 2 fraction digits, e.g. 12.50.
    #[arg(long)]
    price: Money,

    /// Three-letter currency code of the price.
    #[arg(long, default_value = "USD")]
    currency: Currency,

    /// Units in stock (0 or more).
    #[arg(long)]
    stock: StockLevel,

    /// Below this stock a `stock.low` event alerts staff [default: half the stock].
    #[arg(long, value_name = "N")]
    low_stock_threshold: Option<StockLevel>,
}

/// List every product with its stock and threshold.
///
/// Example: `ordctl product list --low-stock --json`
#[derive(clap::Args)]
struct ListArgs {
    /// Only the products whose stock is below their low-stock threshold.
    #[arg(long)]
    low_stock: bool,
}

/// Show one product, read through the Redis product cache.
///
/// Example: `ordctl product show 5 --json`
#[derive(clap::Args)]
struct ShowArgs {
    /// The product id.
    #[arg(value_name = "ID")]
    product_id: ProductId,
}

/// Add units to a product's stock; a threshold that was not set explicitly
/// becomes half the new stock. Stock back at or above the threshold
/// re-arms the low-stock alert.
///
/// Example: `ordctl product restock 5 --quantity 50`
#[derive(clap::Args)]
struct RestockArgs {
    /// The product id.
    #[arg(value_name = "ID")]
    product_id: ProductId,

    /// Units to add (1 or more).
    #[arg(long)]
    quantity: Quantity,
}

impl Args {
    pub fn run(self, ctx: &Ctx) -> anyhow::Result<()> {
        match self.command {
            ProductCommand::Add(args) => args.run(ctx),
            ProductCommand::List(args) => args.run(ctx),
            ProductCommand::Show(args) => args.run(ctx),
            ProductCommand::Restock(args) => args.run(ctx),
        }
    }
}

impl AddArgs {
    fn run(self, ctx: &Ctx) -> anyhow::Result<()> {
        let product = NewProduct {
            name: self.name,
            price: self.price,
            currency: self.currency,
            stock: self.stock,
            low_stock_threshold: self.low_stock_threshold,
        };
        let mut conn = db::connect(&ctx.settings.database_url)?;
        let added = products::add(&mut conn, &product)?;
        print_one(ctx, &added, "added")
    }
}

impl ListArgs {
    fn run(self, ctx: &Ctx) -> anyhow::Result<()> {
        let mut conn = db::connect(&ctx.settings.database_url)?;
        let listed = match self.low_stock {
            true => products::list_low_stock(&mut conn)?,
            false => products::list(&mut conn)?,
        };
        if ctx.json {
            return output::json(&listed);
        }
        output::line(table(&listed))
    }
}

impl ShowArgs {
    fn run(self, ctx: &Ctx) -> anyhow::Result<()> {
        let mut conn = db::connect(&ctx.settings.database_url)?;
        let product = cache(ctx)?
            .product(&mut conn, self.product_id)?
            .ok_or_else(|| InvalidInput::new(format!("unknown product {}", self.product_id)))?;
        if ctx.json {
            return output::json(&product);
        }
        output::line(table(&[product]))
    }
}

impl RestockArgs {
    fn run(self, ctx: &Ctx) -> anyhow::Result<()> {
        let mut conn = db::connect(&ctx.settings.database_url)?;
        let cache = cache(ctx)?;
        let product = products::restock(&mut conn, Some(&cache), self.product_id, self.quantity)?;
        print_one(ctx, &product, "restocked")
    }
}

fn cache(ctx: &Ctx) -> anyhow::Result<ProductCache> {
    ProductCache::new(&ctx.settings.redis_url, ctx.settings.namespace.clone(), 1)
}

fn print_one(ctx: &Ctx, product: &Product, what: &str) -> anyhow::Result<()> {
    if ctx.json {
        return output::json(product);
    }
    output::line(format!(
        "product {} {what}: {} at {} {}, {} in stock (low below {})",
        product.id,
        product.name,
        product.price,
        product.currency,
        product.stock,
        product.low_stock_threshold
    ))
}

fn table(products: &[Product]) -> comfy_table::Table {
    let mut table = output::table(["id", "name", "price", "stock", "low below"]);
    for product in products {
        table.add_row(vec![
            product.id.to_string(),
            product.name.clone(),
            format!("{} {}", product.price, product.currency),
            product.stock.to_string(),
            product.low_stock_threshold.to_string(),
        ]);
    }
    table
}
